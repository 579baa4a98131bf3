"""The BO planner's settings (``planner: {kind: bo, settings: ...}``): the model, the acquisition, how
P(feasible) is had, the chance constraint, the initial design, and the planner's own CALPHAD physics
(:class:`CalphadPhysicsSettings`) and transfer prior (:class:`TransferPriorSettings`). Validated here when a
config is loaded; what depends on the campaign (its space, its objective) :meth:`BoPlanner.check
<sdl.agents.bo_planner.BoPlanner.check>` adds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sdl.agents.causal_planner import CausalSettings
from sdl.env.calphad import DEFAULT_DATABASE
from sdl.env.strength import StrengthParameters
from sdl.objective import ConstraintConfig, ObjectiveConfig
from sdl.settings import ResolvedPath, Section
from sdl.surrogates.deep_sets import TrainingSettings

# What the objective's model may be told about an alloy: the CALPHAD features of its table
# (:data:`~sdl.surrogates.calphad_features.FEATURES`), and the peak-aged hardness the textbook strength
# model gives at its CALPHAD gamma-prime fraction, and whether solutionising leaves gamma-prime undissolved
# (:mod:`sdl.surrogates.strength_prior`).
PhysicsFeature = Literal["gamma_prime_at_ageing", "brittle_at_ageing", "solution_margin_k", "ageing_margin_k",
                         "solvus_margin_k", "peak_hardness_hv", "incomplete_solutionising"]


class CalphadPhysicsSettings(Section):
    """The planner's own thermodynamics (``feasibility: calphad``): its database and the campaign's heat
    treatment, from which it tabulates CALPHAD features once (:mod:`sdl.surrogates.calphad_features`)."""

    solution_temperature_k: float = Field(gt=0, description="the campaign's solutionising temperature")
    ageing_temperature_k: float | None = Field(default=None, gt=0, description="the campaign's ageing temperature")
    ageing_temperature_parameter: str | None = Field(
        default=None, description="or: the space parameter that is the ageing temperature (K), where the campaign "
                                  "designs it beside the composition")
    database: str = Field(default=DEFAULT_DATABASE, description="the planner's database (TDB path or pycalphad:NAME)")
    points_per_axis: int = Field(default=9, ge=2, le=33, description="grid points per free element of the table")
    offset_sd_k: float = Field(default=40.0, gt=0, description="how far (K) the database's solvus may be off, a priori")
    gradient_sd_k: float = Field(default=0.0, ge=0, description="how much (K) that error may change across each "
                                                                "input's range (0: one shift everywhere)")
    boundary_width_k: float = Field(default=12.5, gt=0, description="how blurred (K of margin) the boundary between "
                                                                  "feasible and not is, for a known shift")
    objective_inputs: list[PhysicsFeature] = Field(
        default_factory=list, description="CALPHAD features the objective's GP sees beside the composition (hybrid "
                                          "surrogate); none: the GP sees the composition only")
    objective_mean: list[PhysicsFeature] = Field(
        default_factory=list, description="CALPHAD features of a prior mean linear in them (weights fitted with the "
                                          "GP); the GP models the residual on the composition (hybrid surrogate)")
    strength: StrengthParameters = Field(
        default_factory=StrengthParameters, description="the planner's belief about strengthening (literature values), "
                                                        "for the peak_hardness_hv feature")
    cache_path: str | None = Field(default=None, description="CALPHAD cache (default: ~/.cache/sdl)")

    @model_validator(mode="after")
    def _order(self) -> CalphadPhysicsSettings:
        if self.objective_inputs and self.objective_mean:
            raise ValueError("give CALPHAD features either as objective_inputs (seen by the kernel) or as "
                             "objective_mean (a linear prior mean), not both")
        if (self.ageing_temperature_k is None) == (self.ageing_temperature_parameter is None):
            raise ValueError("give either ageing_temperature_k (a fixed ageing hold) or ageing_temperature_parameter "
                             "(the space parameter that designs it)")
        if self.ageing_temperature_k is not None and self.ageing_temperature_k >= self.solution_temperature_k:
            raise ValueError(f"ageing ({self.ageing_temperature_k} K) must be below solutionising "
                             f"({self.solution_temperature_k} K)")
        return self


class TransferPriorSettings(Section):
    """A prior mean for the objective from a model learned on another alloy system (``sdl transfer
    pretrain``): the GP's mean is linear in the model's prediction (weight and offset fitted with the
    GP), the GP models what it leaves, so a campaign on a new system starts with the old one's knowledge."""

    kind: Literal["transfer"] = "transfer"
    source: ResolvedPath = Field(description="the Deep Sets checkpoint (source_model.pt of `sdl transfer pretrain`)")
    adapt: Literal["none", "embedding", "finetune", "embedding_finetune"] = Field(default="none", description=(
        "before each proposal, adapt the source model to the campaign's results by this regime (the objective "
        "must be the model's property): learn the embeddings of the elements the source never saw, fine-tune "
        "every weight, or both in turn (embedding: the best in the six-component campaign; fine-tuning overfits "
        "the first few results); none: the source model as it is"))
    adapt_from: int = Field(default=4, ge=2, description="finished observations before the first adaptation")
    training: TrainingSettings = Field(default_factory=TrainingSettings,
                                       description="how an adaptation trains (learning rates, early stopping)")


class BoSettings(Section):
    """How the BO planner works (``planner: {kind: bo, settings: ...}``); the objective is the campaign's."""

    acquisition: Literal["nei", "ei"] = Field(
        default="nei", description="one objective: noisy log-EI (joint over the feasible incumbents) or plug-in log-EI")
    extra_objectives: list[ObjectiveConfig] = Field(
        default_factory=list, description="more objectives besides the campaign's: multi-objective BO with log-NEHVI")
    feasibility: Literal["none", "classifier", "measured", "calphad"] = Field(
        default="none", description="where P(feasible) comes from: an agent providing `feasibility` (the CALPHAD "
                                    "phase-boundary simulator), a GP on `constraint`, or the planner's own CALPHAD "
                                    "margin corrected by the measured verdicts (`calphad` settings)")
    calphad: CalphadPhysicsSettings | None = Field(
        default=None, description="feasibility 'calphad': the planner's database and the campaign's heat treatment")
    constraint: ConstraintConfig | None = Field(
        default=None, description="what counts as feasible in the measurements (for 'measured', 'penalty' and reports)")
    constraint_handling: Literal["probability", "penalty"] = Field(
        default="probability", description="probability: log EI + log P(feasible); penalty: objective - weight x violation")
    update_classifier: bool = Field(
        default=False,
        description="feasibility 'classifier': also learn from each experiment's `constraint` verdict (Laplace update)")
    feasibility_acquisition: Literal["weighted", "joint"] = Field(
        default="weighted",
        description="how P(feasible) enters one objective's noisy EI: weighted, log EI + exponent x log P(feasible) "
                    "of its own model; joint (feasibility 'measured' only), the constraint's GP sampled jointly with "
                    "the objective's inside noisy EI (BoTorch's constraints=, as Ax does; the exponent is 1)")
    constraint_scale: Literal["linear", "bilog"] = Field(
        default="linear",
        description="feasibility 'measured': how the constraint's GP sees its values: as measured, or bilog about the "
                    "bound, bound + sign(v - bound) log(1 + |v - bound|) (Eriksson & Poloczek 2021, as Ax): "
                    "magnifies the values near the bound, where feasibility is decided; one bound only")
    lengthscale_prior: Literal["dim_scaled", "gamma"] = Field(
        default="dim_scaled",
        description="the GPs' kernel prior: dim_scaled, BoTorch's default (lets a few points make an input look "
                    "irrelevant); gamma, BoTorch's earlier Matern-5/2 with Gamma(3, 6) lengthscales (keeps the model "
                    "uncertain away from its data: on constrained Hartmann-6 it freed 10 of 15 runs stuck in the "
                    "second basin, stop 49)")
    feasibility_exponent: float = Field(
        default=1.0, ge=0.0, le=10.0, description="EI x P(feasible)^exponent; above 1 avoids failed specimens harder")
    feasibility_floor: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="a chance constraint: propose only alloys with P(feasible) at least "
                                                 "this (the acquisition is maximised inside that region); 0: none")
    feasibility_floor_known_shift: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="feasibility 'calphad', beside feasibility_floor: also P(feasible) at least this were the "
                    "database's error known (its posterior mean). With a lower feasibility_floor the planner risks "
                    "alloys to learn where the boundary lies, but not to test how blurred it is; 0: none")
    penalty_weight: float = Field(default=10.0, ge=0, description="objective standard deviations per unit violation")
    initial_points: int = Field(default=8, ge=2, description="Sobol' points before the first model")
    initial_design: Literal["sobol", "center", "causal", "physics", "prior"] = Field(
        default="sobol", description="the first points: Sobol', or (center) first the centre of the space then Sobol' "
                                     "(as Ax starts), or the causal planner's best guesses from a past ledger, "
                                     "or (physics) first the alloy the planner's own peak-hardness estimate ranks "
                                     "highest (inside the chance constraint; again, with the boundary corrected, "
                                     "while every alloy so far failed), or (prior) first the alloy the transfer "
                                     "prior's model predicts best, then Sobol'")
    causal: CausalSettings | None = Field(default=None, description="initial_design 'causal': the causal planner's settings")
    prior: TransferPriorSettings | None = Field(
        default=None, description="the objective's prior mean from a model of another alloy system ({kind: transfer, "
                                  "source: CHECKPOINT}); none: a constant mean")
    num_restarts: int = Field(default=8, ge=1, description="L-BFGS restarts of the acquisition search")
    # On the twin at 1,000 observations, 10 restarts instead of 20 found the same acquisition value (to 1e-4 on
    # 4 data sets) in 2.7-4.6 s instead of 4.1-5.7 s (stop 45).
    num_restarts_at_scale: int | None = Field(
        default=10, ge=1, description="at most this many restarts once the observations outnumber "
                                      "hyperparameter_subset (each restart's cost grows with them); none: "
                                      "num_restarts always")
    raw_samples: int = Field(default=512, ge=16)
    mc_samples: int = Field(default=128, ge=16)
    hyperparameter_subset: int = Field(
        default=256, ge=16, description="fit the GP's hyperparameters on at most this many observations (drawn at "
                                        "random); the GP still conditions on all of them")
    baseline_limit: int = Field(
        default=16, ge=1, description="noisy EI: at most this many feasible incumbents in its joint sample (those most "
                                      "probably the best); each costs a row of the n x n posterior per evaluation")
    candidate_generator: Literal["sobol", "cvae"] = Field(
        default="sobol", description="starting candidates of the acquisition search: Sobol' points of the space, or "
                                     "half of them from a conditional VAE of the campaign's results (composition spaces)")

    @model_validator(mode="after")
    def _consistent(self) -> BoSettings:
        if self.feasibility == "measured" and self.constraint is None:
            raise ValueError("feasibility 'measured' needs a constraint (measurements and at_least/at_most)")
        if self.feasibility == "calphad" and (self.calphad is None or self.constraint is None):
            raise ValueError("feasibility 'calphad' needs the `calphad` settings (solution_temperature_k, "
                             "ageing_temperature_k) and a constraint giving the measured verdicts")
        if self.update_classifier and (self.feasibility != "classifier" or self.constraint is None):
            raise ValueError("update_classifier needs feasibility 'classifier' and a constraint giving the verdicts")
        if self.constraint_handling == "penalty":
            if self.constraint is None:
                raise ValueError("constraint_handling 'penalty' needs a constraint to penalise")
            if self.extra_objectives:
                raise ValueError("constraint_handling 'penalty' applies to a single objective")
        if self.initial_design == "causal" and self.causal is None:
            raise ValueError("initial_design 'causal' needs the `causal` settings (at least `history`)")
        if self.initial_design == "physics" and self.calphad is None:
            raise ValueError("initial_design 'physics' needs the `calphad` settings (the planner's own thermodynamics "
                             "and strength belief give its estimate)")
        if self.initial_design == "prior" and self.prior is None:
            raise ValueError("initial_design 'prior' starts from the alloy the transfer prior's model predicts best: "
                             "it needs `prior` ({kind: transfer, source: CHECKPOINT})")
        if self.feasibility_floor > 0 and (self.feasibility == "none" or self.constraint_handling != "probability"):
            raise ValueError("feasibility_floor needs a P(feasible): feasibility classifier, measured or calphad, "
                             "with constraint_handling 'probability'")
        if self.feasibility_floor_known_shift > 0 and (self.feasibility != "calphad" or self.feasibility_floor == 0):
            raise ValueError("feasibility_floor_known_shift needs feasibility 'calphad' (the database's error it "
                             "speaks of) and a feasibility_floor")
        if self.feasibility_acquisition == "joint" and (self.feasibility != "measured" or self.extra_objectives
                                                        or self.acquisition != "nei"):
            raise ValueError("feasibility_acquisition 'joint' samples a measured constraint's GP with one objective's "
                             "inside noisy EI: it needs feasibility 'measured', acquisition 'nei' and no "
                             "extra_objectives")
        if self.constraint_scale == "bilog" and (self.feasibility != "measured" or (
                self.constraint.at_least is not None and self.constraint.at_most is not None)):
            raise ValueError("constraint_scale 'bilog' is about a measured constraint's one bound: it needs "
                             "feasibility 'measured' and a constraint with at_least or at_most, not both")
        if self.feasibility_acquisition == "joint" and self.feasibility_exponent != 1.0:
            raise ValueError("feasibility_acquisition 'joint' weighs each sample by its feasibility once: leave "
                             "feasibility_exponent at 1")
        if self.prior is not None and self.extra_objectives:
            raise ValueError("a transfer prior models one objective; it cannot be given with extra_objectives")
        if self.prior is not None and (self.calphad is not None and (self.calphad.objective_inputs
                                                                      or self.calphad.objective_mean)):
            raise ValueError("give the objective either a transfer prior or CALPHAD objective features, not both")
        if self.candidate_generator == "cvae" and self.extra_objectives:
            raise ValueError("candidate_generator 'cvae' conditions on one objective; use sobol with several")
        return self
