"""Bayesian-optimisation planner (BoTorch): which alloy to make next, under phase-stability constraints.

Model/acquisition split as in BoTorch. Inputs are the space's continuous parameters followed by
*every* element's mole fraction; proposals lie on the composition simplex by construction, not by a
penalty: where the balance element's bounds can bind, the simplex (sum of fractions = 1) is an equality
constraint handed to ``optimize_acqf`` together with the element bounds (SLSQP); where the other
elements' bounds imply the balance element's, the search runs over the other coordinates in a box
(L-BFGS-B) and the balance is filled in (:class:`~sdl.agents.bo_acquisition.BalanceCompleted`).

- Model: ``SingleTaskGP`` per objective (homoskedastic noise inferred: noise-aware), inputs
  normalised over the space's bounds, outcomes standardised. The GP sees the parameters and the
  *free* fractions only: the balance element is a linear function of them, and an ARD kernel over a
  redundant, collinear coordinate fits one lengthscale too many on a handful of points.
- Acquisition: noisy log expected improvement (``qLogNoisyExpectedImprovement``) over the feasible
  incumbents, or (``acquisition: ei``) plug-in log-EI over the best posterior mean at them, or
  log-NEHVI for several objectives; plus log P(feasible) per point. P(feasible) comes from the phase classifier
  learned on CALPHAD (sent with the request as a :class:`FeasibilityModel`), from a GP on a
  measured constraint, or (``feasibility: calphad``) from the planner's own CALPHAD margin corrected
  by the measured verdicts (:class:`~sdl.surrogates.calphad_features.CalphadFeasibility`); the
  objective's GP may also see CALPHAD features (``calphad.objective_inputs``) or model the residual
  of a prior mean linear in them (``calphad.objective_mean``). A measured constraint's GP may instead be
  sampled jointly with the objective's inside noisy EI (``feasibility_acquisition: joint``, as Ax). Alternatively
  (``constraint_handling: penalty``) the objective itself is penalised by how far a measured
  constraint is violated.
- Batches: greedy sequential; each new point is chosen with the in-flight experiments and the
  points already chosen as pending points (``X_pending``), so an asynchronous campaign never asks
  twice for the same region.
- Scale: with more than ``hyperparameter_subset`` observations the GP's hyperparameters are fitted
  on a random subset (the GP conditions on all), and noisy EI keeps at most ``baseline_limit``
  incumbents, and the acquisition search restarts at most ``num_restarts_at_scale`` times; at 1,000
  observations one proposal takes about 2-4 s on 2 cores (bench/planner_time.py).
- Layout: the settings are validated in :mod:`sdl.agents.bo_settings`; the acquisition wrappers (P(feasible)
  weighting, chance constraint, physics guess, balance completion) are in :mod:`sdl.agents.bo_acquisition`;
  the GP builder in :mod:`sdl.surrogates.gp`.
- Deterministic for a seed: the initial design is the Sobol' planner's sequence and every random
  draw (restarts, QMC samples) is seeded by the seed and the campaign position.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.objective import GenericMCObjective
from botorch.acquisition.utils import prune_inferior_points
from botorch.models import ModelListGP
from botorch.optim import optimize_acqf
from botorch.optim.initializers import initialize_q_batch
from botorch.sampling import SobolQMCNormalSampler
from scipy.stats import qmc

from sdl.agents.base import AgentContext, Capability
from sdl.agents.bo_acquisition import BalanceCompleted, ChanceConstrained, FeasibilityWeighted, PhysicsGuess
from sdl.agents.bo_settings import BoSettings, CalphadPhysicsSettings, TransferPriorSettings
from sdl.agents.causal_planner import CausalPlanner
from sdl.agents.planner import Planner, ProposeRequest, SobolPlanner
from sdl.experiment import Composition, DesignPoint, Observation
from sdl.settings import NoSettings
from sdl.surrogates.gp import fit_single_task_gp
from sdl.surrogates.phase_classifier import classifier_log_probability, update_classifier
from sdl.surrogates.projection import project_capped_simplex

DTYPE = torch.double


class BoPlanner(Planner):
    name = "bo"
    Settings = BoSettings

    @classmethod
    def check(cls, settings: BoSettings, context: AgentContext) -> None:
        context.require_space("the bo planner")
        if settings.candidate_generator == "cvae":
            context.require_space("candidate_generator 'cvae'", composition_only=True)
        if settings.initial_design == "causal":
            CausalPlanner.check(settings.causal, context)
        if settings.initial_design == "physics" and context.objective.direction != "maximize":
            raise ValueError(f"initial_design 'physics' starts from the hardest alloy the planner's estimate knows, "
                             f"but the objective {context.objective.measurement!r} is minimised")
        if settings.prior is not None:
            context.require_space("a transfer prior", composition=True)
            model = cls._transfer_model(settings.prior, context)
            if settings.prior.adapt != "none" and model.property_name != context.objective.measurement:
                raise ValueError(f"prior.adapt fits {settings.prior.source.name} to the campaign's results, but it "
                                 f"predicts {model.property_name!r} and the objective is "
                                 f"{context.objective.measurement!r}; use adapt: none (a prior linear in it)")
            if settings.prior.adapt != "none":
                try:
                    model.check_regime(settings.prior.adapt, list(context.space.composition.elements))
                except ValueError as e:
                    raise ValueError(f"prior.adapt, {settings.prior.source.name}: {e}") from None
        physics = settings.calphad
        if physics is not None:
            context.require_space("the `calphad` settings", composition=True)
            name = physics.ageing_temperature_parameter
            if name is not None:
                if name not in context.space.parameters:
                    raise ValueError(f"calphad.ageing_temperature_parameter {name!r} is not a parameter of the space "
                                     f"(it has {sorted(context.space.parameters) or 'none'})")
                if context.space.parameters[name].high >= physics.solution_temperature_k:
                    raise ValueError(f"the space lets {name} reach {context.space.parameters[name].high} K, not below "
                                     f"the solutionising {physics.solution_temperature_k} K")
            if "peak_hardness_hv" in (*physics.objective_inputs, *physics.objective_mean) \
                    or settings.initial_design == "physics":
                from sdl.surrogates.strength_prior import check_coefficients

                try:
                    check_coefficients(physics.strength, context.space.composition.elements)
                except ValueError as e:
                    raise ValueError(f"calphad.strength: {e}") from None

    @classmethod
    def requires(cls, settings: BoSettings) -> frozenset[Capability]:
        needs_classifier = settings.feasibility == "classifier" and settings.constraint_handling == "probability"
        return frozenset({"feasibility"}) if needs_classifier else frozenset()

    def __init__(self, settings: BoSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        space = self.space
        self.objectives = [context.objective, *settings.extra_objectives]
        self.initial = SobolPlanner(NoSettings(), context)
        self.check(settings, context)
        self.warm_start = CausalPlanner(settings.causal, context) if settings.initial_design == "causal" else None
        self.columns = list(space.parameters) + (list(space.composition.elements) if space.composition else [])
        lows = [r.low for r in space.parameters.values()]
        highs = [r.high for r in space.parameters.values()]
        if space.composition is not None:
            lows += [lo for lo, _ in space.composition.elements.values()]
            highs += [hi for _, hi in space.composition.elements.values()]
        self.bounds = torch.tensor([lows, highs], dtype=DTYPE)
        self.calphad_feasibility = self.calphad_features = self.physics_features = None
        self.chance_fallbacks = 0  # proposals no restart could keep inside the chance constraint (diagnostics)
        if settings.calphad is not None:
            self.calphad_features = self._calphad_features(settings.calphad)
        if settings.feasibility == "calphad":
            from sdl.surrogates.calphad_features import CalphadFeasibility

            self.calphad_feasibility = CalphadFeasibility(self.calphad_features, width_k=settings.calphad.boundary_width_k,
                                                          offset_sd_k=settings.calphad.offset_sd_k,
                                                          gradient_sd_k=settings.calphad.gradient_sd_k)
        self.transfer_model = self._transfer_model(settings.prior, context) if settings.prior is not None else None
        self.equality_constraints = []
        # Columns the GP sees: everything but the balance element (see the module docstring).
        self.model_columns = torch.arange(len(self.columns))
        if space.composition is not None:
            self.model_columns = torch.tensor([i for i, name in enumerate(self.columns)
                                               if name != space.composition.balance_element])
            start = len(space.parameters)
            k = len(space.composition.elements)
            self.equality_constraints = [(torch.arange(start, start + k), torch.ones(k, dtype=DTYPE), 1.0)]
        self.box = self._box_after_balance()

    def _box_after_balance(self) -> dict | None:
        """Where the free elements' bounds imply the balance element's (the twin: Al, Co, Cr each bounded, Ni
        between 0.45 and 0.98 whatever they are), the design space is a box in the other coordinates: what
        :class:`BalanceCompleted` needs. None where the balance element's bounds can bind."""
        comp = self.space.composition
        if comp is None:
            return None
        free = [self.columns.index(e) for e in comp.free_elements]
        balance = self.columns.index(comp.balance_element)
        low, high = comp.elements[comp.balance_element]
        if 1.0 - float(self.bounds[1, free].sum()) < low - 1e-12 or 1.0 - float(self.bounds[0, free].sum()) > high + 1e-12:
            return None
        kept = torch.tensor([i for i in range(len(self.columns)) if i != balance])
        return {"kept": kept, "balance": balance, "composition": torch.tensor([kept.tolist().index(i) for i in free])}

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

    def _calphad_features(self, physics: CalphadPhysicsSettings):
        """CALPHAD features of compositions (and the designed ageing temperature), tabulated once from the
        planner's own database."""
        from sdl.env.calphad import default_cache_path
        from sdl.surrogates.calphad_features import CalphadFeatures

        comp = self.context.require_space("the `calphad` settings", composition=True).composition
        inputs = list(comp.free_elements)
        ageing_k = physics.ageing_temperature_k
        if physics.ageing_temperature_parameter is not None:
            ageing = self.space.parameters[physics.ageing_temperature_parameter]
            ageing_k = (ageing.low, ageing.high)
            inputs.append(physics.ageing_temperature_parameter)
        self.free_index = torch.tensor([self.columns.index(name) for name in inputs])  # the features' columns
        return CalphadFeatures(comp.free_elements, comp.balance_element,
                               {e: comp.elements[e] for e in comp.free_elements},
                               solution_temperature_k=physics.solution_temperature_k,
                               ageing_temperature_k=ageing_k, database=physics.database,
                               points_per_axis=physics.points_per_axis,
                               cache_path=physics.cache_path or default_cache_path())

    @staticmethod
    def _transfer_model(prior: TransferPriorSettings, context: AgentContext):
        """The prior's Deep Sets ensemble, checked against the space's elements (each needs descriptors)."""
        from sdl.surrogates.deep_sets import DeepSetsEnsemble

        model = DeepSetsEnsemble.load(prior.source)
        model.descriptors(list(context.space.composition.elements))  # refuses an element without descriptors
        for member in model.members:  # a fixed prior: gradients flow to the inputs only
            member.requires_grad_(False)
        return model

    def _transfer_prior_gp(self, x: torch.Tensor, y: torch.Tensor):
        """A GP whose prior mean is linear in the transferred model's prediction for the composition (the
        model adapted to the campaign's results first, with ``prior.adapt``)."""
        n, elements = len(self.space.parameters), list(self.space.composition.elements)
        model = self._adapted_transfer_model(x[:, n:], y[:, 0])
        with torch.no_grad():  # the prediction's range over the space, to normalise it
            values = model.mean_feature(elements, self._composition_probe).squeeze(-1)
        feature_bounds = torch.stack([values.min(), values.max() + 1e-9]).reshape(2, 1)

        def prediction(X: torch.Tensor) -> torch.Tensor:
            return model.mean_feature(elements, X[..., n:])

        return fit_single_task_gp(x, y, bounds=self.bounds, columns=self.model_columns, features=prediction,
                                  feature_bounds=feature_bounds, feature_role="mean",
                                  lengthscale_prior=self.settings.lengthscale_prior, **self._subset(x))

    @functools.cached_property
    def _composition_probe(self) -> torch.Tensor:
        """256 Sobol' compositions of the space (256 x elements): where a model's range over it is read."""
        n = len(self.space.parameters)
        return self.to_tensor(self.initial.propose(ProposeRequest(n=256)))[:, n:]

    @property
    def _objective_sign(self) -> float:
        """+1 where the campaign's objective is maximised, -1 where minimised (BoTorch maximises)."""
        return 1.0 if self.context.objective.direction == "maximize" else -1.0

    def _adapted_transfer_model(self, fractions: torch.Tensor, y: torch.Tensor):
        """The source model, or (``prior.adapt``, from ``adapt_from`` results on) a copy adapted to the campaign's
        results: y is the objective as BoTorch maximises it, turned back into the model's property. Trained
        afresh from the source each time, seeded by the campaign position, so a proposal stays a function of
        its request. The GP then models what the adapted model leaves, on the same data: the adaptation's
        few parameters (a 32-number embedding per new element, or early-stopped small steps) keep it from
        interpolating the results, which would leave the GP nothing to be uncertain about (every weight, in
        ``finetune``, can: in the six-component campaign it needed 15 experiments where ``embedding`` needed 12)."""
        prior, model = self.settings.prior, self.transfer_model
        if prior.adapt == "none" or len(y) < prior.adapt_from:
            return model
        # (embedding_finetune is finetune where no element is new: the model's fit says so, not this planner)
        adapted = model.fit(list(self.space.composition.elements), fractions.numpy(),
                            (self._objective_sign * y).numpy(), regime=prior.adapt, training=prior.training,
                            seed=self.seed * 1_000_003 + len(y))
        for member in adapted.members:
            member.requires_grad_(False)
        return adapted

    def _subset(self, x: torch.Tensor) -> dict:
        """How the GP's hyperparameters are fitted at scale: on a subset drawn by the seed and the data's size."""
        return {"hyperparameter_subset": self.settings.hyperparameter_subset, "seed": self.seed * 1_000_003 + len(x)}

    def _gp(self, x: torch.Tensor, y: torch.Tensor, *, physics: bool = False):
        # Fitted from scratch each time: a planner is a pure function of its request, so a restarted
        # actor proposes what the lost one would have (about 0.6 s at 100 observations, 2 threads).
        if physics and self.transfer_model is not None:
            return self._transfer_prior_gp(x, y)
        calphad = self.settings.calphad
        names = (calphad.objective_inputs or calphad.objective_mean) if physics and calphad is not None else []
        subset = self._subset(x)
        if not names:
            return fit_single_task_gp(x, y, bounds=self.bounds, columns=self.model_columns,
                                      lengthscale_prior=self.settings.lengthscale_prior, **subset)
        features, feature_bounds = self._physics_features(names)
        return fit_single_task_gp(x, y, bounds=self.bounds, columns=self.model_columns, features=features,
                                  feature_bounds=feature_bounds,
                                  feature_role="mean" if calphad.objective_mean else "kernel",
                                  lengthscale_prior=self.settings.lengthscale_prior, **subset)

    def _physics_features(self, names: list[str]):
        """X -> the named physics features (..., len(names)), and their range over the CALPHAD table's grid
        (2 x len(names)) to normalise them; built once (the names are the planner's settings)."""
        if self.physics_features is not None:
            return self.physics_features
        from sdl.surrogates.strength_prior import PeakHardnessEstimate, incomplete_solutionising

        table = self.calphad_features
        derived = {}
        if "peak_hardness_hv" in names:
            derived["peak_hardness_hv"] = PeakHardnessEstimate(table, self.space.composition.balance_element,
                                                               self.settings.calphad.strength)
        if "incomplete_solutionising" in names:
            derived["incomplete_solutionising"] = lambda inputs, tabulated: incomplete_solutionising(
                table, inputs, tabulated)

        def of_inputs(inputs: torch.Tensor) -> torch.Tensor:
            tabulated = table(inputs)  # interpolated once per call (the acquisition's hot path), shared by all
            return torch.stack([derived[n](inputs, tabulated) if n in derived
                                else tabulated[..., table.names.index(n)] for n in names], dim=-1)

        with torch.no_grad():
            values = of_inputs(torch.cartesian_prod(*table.axes).reshape(-1, len(table.axes)))
        feature_bounds = torch.stack([values.min(dim=0).values, values.max(dim=0).values])
        feature_bounds[1] = torch.maximum(feature_bounds[1], feature_bounds[0] + 1e-6)
        free_index = self.free_index
        self.physics_features = (lambda X: of_inputs(X[..., free_index])), feature_bounds
        return self.physics_features

    def _verdicts(self, done: list[Observation]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The observations with a measured verdict on the constraint: their inputs (n x d) and the verdicts
        (1 feasible, 0 not); None where none has one."""
        labelled = [(o, ok) for o in done if (ok := self.settings.constraint.satisfied(o.measurements)) is not None]
        if not labelled:
            return None
        return (self.to_tensor([o.point for o, _ in labelled]),
                torch.tensor([float(ok) for _, ok in labelled], dtype=DTYPE))

    def _log_feasibility(self, request: ProposeRequest, done: list[Observation], constraint_gp=None):
        """log P(feasible) of inputs X, or None; ``constraint_gp``: the measured constraint's GP where the caller
        has fitted it already (:meth:`_constraint_gp` of the same ``done``)."""
        s = self.settings
        if s.constraint_handling == "penalty" or s.feasibility == "none":
            return None
        if s.feasibility == "calphad":
            model = self._calphad_belief(done)
            return lambda X: model.log_probability(X[..., self.free_index])
        if s.feasibility == "classifier":
            if request.feasibility is None:
                raise ValueError("this planner weighs by a feasibility classifier, but the request carries none")
            model = request.feasibility
            if s.update_classifier and s.constraint is not None and (verdicts := self._verdicts(done)) is not None:
                model = update_classifier(model, self.columns, *verdicts)
            return classifier_log_probability(model, self.columns)
        model = constraint_gp if constraint_gp is not None else self._constraint_gp(done)
        if model is None:
            return None
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

    def _constraint_gp(self, done: list[Observation]):
        """A GP on the measured constraint's value (feasibility 'measured'), or None with fewer than 2 values.
        With ``constraint_scale: bilog`` on the bilog of the value about the bound, which keeps the bound and
        which side of it a value lies, so P(feasible) and the joint acquisition compare with the bound as measured."""
        c = self.settings.constraint
        rows = [(o, c.value(o.measurements)) for o in done]
        rows = [(o, v) for o, v in rows if v is not None]
        if len(rows) < 2:
            return None
        values = torch.tensor([[v] for _, v in rows], dtype=DTYPE)
        if self.settings.constraint_scale == "bilog":
            bound = c.at_least if c.at_least is not None else c.at_most
            values = bound + torch.sign(values - bound) * torch.log1p((values - bound).abs())
        return self._gp(self.to_tensor([o.point for o, _ in rows]), values)

    def _calphad_belief(self, done: list[Observation]):
        """The planner's CALPHAD feasibility with the database's error updated by the verdicts so far."""
        model = self.calphad_feasibility
        if (verdicts := self._verdicts(done)) is not None:
            model = model.updated(verdicts[0][:, self.free_index], verdicts[1])
        return model

    def _chance_constraint(self, log_feasibility, done: list[Observation], floor: float):
        """The chance constraint as a slack, X -> log units, >= 0 where a proposal may go: log P(feasible)
        at least log ``floor``, and with ``feasibility_floor_known_shift`` also log P at least that were the
        database's error at its posterior mean. None without a constraint.

        Why two: P(feasible) mixes what verdicts can teach (where the database's boundary really lies) with
        what they cannot (how blurred it is). A floor low enough to go and learn the first (0.75: the best
        alloys of twin_1350_1100 lie on the solvus, which a floor of 0.9 keeps the planner 65 K inside of
        until feasible verdicts far inside have crept it outwards) keeps risking one failure in four once
        the boundary is known: 7 of 40 experiments, most after the best was found (stop 40)."""
        if floor <= 0 or log_feasibility is None:
            return None
        log_floor = math.log(floor)
        known_floor = self.settings.feasibility_floor_known_shift
        if known_floor <= 0:
            return lambda X: log_feasibility(X) - log_floor
        belief, log_known_floor = self._calphad_belief(done), math.log(known_floor)

        def slack(X: torch.Tensor) -> torch.Tensor:
            known = belief.log_probability_known_shift(X[..., self.free_index]) - log_known_floor
            return torch.minimum(log_feasibility(X) - log_floor, known)

        return slack

    # -- proposing -----------------------------------------------------------------------------

    def _training_data(self, observations: list[Observation]) -> tuple[list[Observation], torch.Tensor]:
        s = self.settings
        names = [o.measurement for o in self.objectives]
        done = [o for o in observations if o.status == "done" and all(n in o.measurements for n in names)]
        y = torch.tensor([[o.measurements[n] for n in names] for o in done], dtype=DTYPE).reshape(len(done), len(names))
        signs = torch.tensor([1.0 if o.direction == "maximize" else -1.0 for o in self.objectives], dtype=DTYPE)
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
        model = self._gp(x, y, physics=True)
        # the measured constraint's GP, fitted once: for P(feasible) and, with feasibility_acquisition joint, for noisy EI
        measured = self.settings.feasibility == "measured" and self.settings.constraint_handling == "probability"
        constraint_gp = self._constraint_gp(done) if measured else None
        log_feasibility = self._log_feasibility(request, done, constraint_gp)
        pending = self.to_tensor(request.pending) if request.pending else None
        chosen: list[torch.Tensor] = []
        feasible = self._observed_feasible(x, done, log_feasibility)
        constraint = self._chance_constraint(log_feasibility, done, self.settings.feasibility_floor)
        generated = self._generated_candidates(x, y, feasible, seed=position) \
            if self.settings.candidate_generator == "cvae" else None
        constraint_model = constraint_gp if self.settings.feasibility_acquisition == "joint" else None
        restarts = None  # the settings' num_restarts
        if self.settings.num_restarts_at_scale is not None and len(x) > self.settings.hyperparameter_subset:
            restarts = min(self.settings.num_restarts, self.settings.num_restarts_at_scale)
        for i in range(request.n):
            x_pending = torch.cat([t for t in ([pending] if pending is not None else []) + chosen], dim=0) \
                if (pending is not None or chosen) else None
            if constraint_model is not None:
                acquisition = self._joint_acquisition(model, constraint_model, x, x_pending, seed=position + i)
            else:
                acquisition = self._acquisition(model, x, y, x_pending, feasible, seed=position + i)
            if log_feasibility is not None and constraint_model is None:
                acquisition = FeasibilityWeighted(acquisition, log_feasibility, self.settings.feasibility_exponent)
            chosen.append(self._optimize(acquisition, sobol_seed=self.seed * 7919 + position + i, generated=generated,
                                         constraint=constraint, num_restarts=restarts))
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
        (an alloy CALPHAD says cannot be processed is not worth a first experiment either), or >= the
        chance constraint's floor where that is higher. With ``initial_design: causal``, the causal
        planner's best guesses from the past ledger instead; with ``physics``, the first experiment is
        the alloy the planner's own peak-hardness estimate ranks highest (again after each that failed); with
        ``prior``, the alloy the transferred model predicts best."""
        if self.warm_start is not None:
            points = self.warm_start.propose(request)
            self.predicted = self.warm_start.predicted
            return points
        position = len(request.observations) + len(request.pending)
        points = self._feasible_sobol(request, position)
        if self.settings.initial_design == "physics" and (position == 0 or self._guess_failed(request)):
            points[0] = self._physics_guess(request)
        if self.settings.initial_design == "prior" and position == 0:
            points[0] = self._prior_guess(request)
        if self.settings.initial_design == "center" and position == 0:
            # the centre of the unit cube; of a composition, where its balance element falls inside its bounds
            center, _ = self.space.from_unit_cube(np.full((1, self.space.dimension), 0.5))
            points[:len(center)] = center
        return points

    def _guess_failed(self, request: ProposeRequest) -> bool:
        """Every alloy made so far came out infeasible, and none is in flight: what a metallurgist whose first
        alloy missed the target phase state does next is the same reasoning with the boundary moved by that
        verdict (the planner's CALPHAD feasibility updated), not a space-filling point. So the physics guess is
        made again, under the updated belief, until one alloy is feasible or the initial design is used up."""
        constraint = self.settings.constraint
        if request.pending or constraint is None or self.settings.feasibility != "calphad":
            return False
        verdicts = [constraint.satisfied(o.measurements) for o in request.observations if o.status == "done"]
        return bool(verdicts) and all(v is False for v in verdicts)

    def _prior_log_feasibility(self, request: ProposeRequest):
        """log P(feasible) before any verdict (the planner's CALPHAD or the request's classifier), or None."""
        if self.settings.feasibility == "calphad":
            return self._log_feasibility(request, [])
        if self.settings.feasibility == "classifier" and request.feasibility is not None:
            return classifier_log_probability(request.feasibility, self.columns)
        return None

    def _feasible_sobol(self, request: ProposeRequest, position: int) -> list[DesignPoint]:
        log_probability = self._prior_log_feasibility(request)
        if log_probability is None:
            return self.initial.propose(request)
        constraint = self._chance_constraint(log_probability, [], max(0.5, self.settings.feasibility_floor))
        kept: list[DesignPoint] = []
        scanned = 0
        while len(kept) < position + request.n:
            chunk = self.initial.points(scanned, 256)
            scanned += len(chunk)
            with torch.no_grad():
                ok = constraint(self.to_tensor(chunk)) >= 0
            kept.extend(p for p, good in zip(chunk, ok.tolist()) if good)
            if scanned > 64 * (position + request.n) and not kept:
                return self.initial.propose(request)  # the classifier rules out (almost) everything: ignore it
        return kept[position: position + request.n]

    @functools.cached_property
    def _hardness_estimate(self):
        """The planner's peak-hardness estimate and its range over the CALPHAD table (the physics guess's
        scale): tabulated once, though a failed guess is guessed again."""
        from sdl.surrogates.strength_prior import PeakHardnessEstimate

        table = self.calphad_features
        estimate = PeakHardnessEstimate(table, self.space.composition.balance_element, self.settings.calphad.strength)
        with torch.no_grad():
            on_grid = estimate(torch.cartesian_prod(*table.axes).reshape(-1, len(table.axes)))
        return estimate, max(float(on_grid.max() - on_grid.min()), 1e-6)

    def _physics_guess(self, request: ProposeRequest) -> DesignPoint:
        """What a metallurgist makes first: the alloy of highest estimated peak-aged hardness (the planner's
        own CALPHAD gamma-prime fraction and strength belief, :mod:`sdl.surrogates.strength_prior`) among
        those it believes processable (P(feasible) at least the floor, and at least 0.5)."""
        estimate, scale = self._hardness_estimate
        return self._best_guess(request, PhysicsGuess(estimate, self.free_index, scale))

    def _prior_guess(self, request: ProposeRequest) -> DesignPoint:
        """The alloy the transferred model (the other system's knowledge, before any result of this one)
        predicts best: what a lab that knows the neighbouring system makes first."""
        n, elements = len(self.space.parameters), list(self.space.composition.elements)
        sign = self._objective_sign

        def estimate(fractions: torch.Tensor) -> torch.Tensor:
            return sign * self.transfer_model.mean_feature(elements, fractions).squeeze(-1)

        with torch.no_grad():
            values = estimate(self._composition_probe)
        scale = max(float(values.max() - values.min()), 1e-12)
        return self._best_guess(request, PhysicsGuess(estimate, torch.arange(n, len(self.columns)), scale))

    def _best_guess(self, request: ProposeRequest, guess: PhysicsGuess) -> DesignPoint:
        """The maximum of a model-free estimate among the alloys believed processable (P(feasible) at least
        the floor, and at least 0.5)."""
        done = [o for o in request.observations if o.status == "done"]
        # after failed guesses (_guess_failed), the belief their verdicts leave
        log_feasibility = self._log_feasibility(request, done) if done else self._prior_log_feasibility(request)
        constraint = self._chance_constraint(log_feasibility, done, max(0.5, self.settings.feasibility_floor))
        with torch.random.fork_rng():  # the same guess for every seed: it is the prior's, not the campaign's
            torch.manual_seed(0)
            # an estimate has several local maxima and is cheap next to a GP: search it more widely than EI
            best = self._optimize(guess, sobol_seed=0, constraint=constraint,
                                  raw_samples=max(4096, self.settings.raw_samples),
                                  num_restarts=max(32, self.settings.num_restarts))
        return self.to_point(best[0])

    def _acquisition(self, model, x, y, x_pending, feasible, *, seed: int) -> AcquisitionFunction:
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.settings.mc_samples]), seed=self.seed + seed)
        if y.shape[-1] == 1 and self.settings.acquisition == "nei" and feasible.any():
            # Improvement over the feasible incumbents sampled jointly with the candidate: a point
            # measured many times stops looking better than itself, so the search moves on (the
            # plug-in form below re-proposed one alloy up to 20 times on the twin).
            # Only the incumbents that may be the best matter (BoTorch's pruning), and of those at most
            # baseline_limit: with 1,000 observations pruning kept 68, and the search took 11 s instead of 5.
            # The incumbents' posterior root is cached (cache_root): the same proposals (to 1e-6 in the
            # fractions) in half the time at 100 observations on the twin; no faster at 1,000.
            incumbents = x[feasible]
            if len(incumbents) > self.settings.baseline_limit:
                incumbents = prune_inferior_points(model, incumbents,
                                                   max_frac=self.settings.baseline_limit / len(incumbents))
            return qLogNoisyExpectedImprovement(model, X_baseline=incumbents, sampler=sampler, X_pending=x_pending,
                                                prune_baseline=False, cache_root=True)
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

    def _joint_acquisition(self, model, constraint_model, x, x_pending, *, seed: int) -> AcquisitionFunction:
        """Noisy log-EI over the objective's and the measured constraint's GPs sampled together (``feasibility_
        acquisition: joint``, Ax's way): each sample's improvement over the best incumbent feasible in that same
        sample, weighted by the candidate's feasibility in it (BoTorch's smoothed indicator). Every observation
        is an incumbent: whether it was feasible is itself sampled, not the measured verdict."""
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.settings.mc_samples]), seed=self.seed + seed)
        joint = ModelListGP(model, constraint_model)
        objective = GenericMCObjective(lambda samples, X=None: samples[..., 0])
        c = self.settings.constraint
        constraints = ([lambda samples: c.at_least - samples[..., 1]] if c.at_least is not None else []) + \
                      ([lambda samples: samples[..., 1] - c.at_most] if c.at_most is not None else [])
        incumbents = x
        if len(incumbents) > self.settings.baseline_limit:
            incumbents = prune_inferior_points(joint, incumbents, objective=objective, constraints=constraints,
                                               max_frac=self.settings.baseline_limit / len(incumbents))
        return qLogNoisyExpectedImprovement(joint, X_baseline=incumbents, sampler=sampler, objective=objective,
                                            constraints=constraints, X_pending=x_pending, prune_baseline=False,
                                            cache_root=True)

    def reference_point(self, y: torch.Tensor) -> list[float]:
        """The configured worst values (sign-flipped to maximisation), else the observed worst minus 10 % of the range."""
        ref = []
        for j, o in enumerate(self.objectives):
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

    def _optimize(self, acquisition: AcquisitionFunction, *, sobol_seed: int, generated: torch.Tensor | None = None,
                  constraint=None, raw_samples: int | None = None, num_restarts: int | None = None) -> torch.Tensor:
        """The acquisition's maximiser (1 x d); with a chance constraint (:meth:`_chance_constraint`'s
        slack) only over points inside it, or, where none of the starting points is, the one nearest to it."""
        s = self.settings
        raw_samples = raw_samples or s.raw_samples
        num_restarts = num_restarts or s.num_restarts
        # Starting points: Sobol' points of the space itself (on the simplex, inside the bounds),
        # and the generator's where one is used; BoTorch's initialize_q_batch keeps a good, diverse
        # subset as restarts.
        sobol_n = raw_samples - (0 if generated is None else len(generated))
        sampler = qmc.Sobol(d=self.space.dimension, scramble=True, seed=sobol_seed)
        raw: list[DesignPoint] = []
        while len(raw) < sobol_n:
            accepted, _ = self.space.from_unit_cube(sampler.random(raw_samples))
            raw.extend(accepted)
        raw_x = self.to_tensor(raw[:sobol_n])
        if generated is not None:
            raw_x = torch.cat([raw_x, generated])
        raw_x = raw_x.unsqueeze(1)
        if constraint is not None:
            with torch.no_grad():
                slack = torch.cat([constraint(chunk).squeeze(-1) for chunk in raw_x.split(512)])
            if not (slack >= 0).any():
                self.chance_fallbacks += 1
                return raw_x[int(slack.argmax())]  # nothing believed safe enough: the safest start teaches most
            raw_x = raw_x[slack >= 0]
            acquisition = ChanceConstrained(acquisition, constraint)
        with torch.no_grad():
            values = torch.cat([acquisition(chunk) for chunk in raw_x.split(128)])
        starts, _ = initialize_q_batch(raw_x, values, n=min(num_restarts, len(raw_x)))
        searched, bounds, initial, equalities = acquisition, self.bounds, starts, self.equality_constraints or None
        options = {"maxiter": 200}
        if self.box is not None:
            searched = BalanceCompleted(acquisition, **self.box)
            bounds, initial, equalities = self.bounds[:, self.box["kept"]], starts[..., self.box["kept"]], None
            # L-BFGS-B stops at a relative change of 2e-7 (scipy's default: 2e-9), far below the Monte
            # Carlo error of the acquisition itself; on the twin's physics-mean GP a third fewer evaluations.
            options["factr"] = 1e9
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optimizer warnings are retried inside optimize_acqf
            candidates, values = optimize_acqf(searched, bounds=bounds, q=1, num_restarts=len(starts),
                                               batch_initial_conditions=initial, equality_constraints=equalities,
                                               options=options, return_best_only=False)
        candidates, values = candidates.detach(), values.detach().reshape(-1)
        if self.box is not None:
            candidates = searched.complete(candidates)
        if constraint is not None:  # the best restart that ended inside the constraint (to 0.1 % of P)
            with torch.no_grad():
                inside = constraint(candidates).reshape(-1) >= -1e-3
            if not inside.any():
                self.chance_fallbacks += 1
                return starts[int(acquisition(starts).argmax())]
            values = torch.where(inside, values, torch.tensor(-torch.inf, dtype=values.dtype))
        return candidates[int(values.argmax())]
