"""The BO planner's acquisition pieces, each a BoTorch ``AcquisitionFunction`` wrapping another: the
feasibility weighting (log EI + exponent x log P(feasible)), the chance constraint as an exact penalty,
the planner's own physics estimate as the acquisition of its first experiment, and the balance element
filled in so that a simplex with non-binding balance is searched as a box. Plain BoTorch: no Ray, no bus."""

from __future__ import annotations

import torch
from botorch.acquisition import AcquisitionFunction


class _Wrapping(AcquisitionFunction):
    """An acquisition built on another one (``self.acquisition``), to which pending points are handed on."""

    def __init__(self, acquisition: AcquisitionFunction) -> None:
        super().__init__(model=acquisition.model)
        self.acquisition = acquisition

    def set_X_pending(self, X_pending: torch.Tensor | None = None) -> None:
        self.acquisition.set_X_pending(X_pending)


class FeasibilityWeighted(_Wrapping):
    """log acquisition + exponent x sum over the q points of log P(feasible): the hybrid EI x P(feasible)^exponent.

    An exponent above 1 is risk aversion: a failed specimen costs a furnace cycle, so a point at
    P = 0.5 must promise more improvement than EI x P alone asks.
    """

    def __init__(self, acquisition: AcquisitionFunction, log_feasibility, exponent: float = 1.0) -> None:
        super().__init__(acquisition)
        self.log_feasibility = log_feasibility
        self.exponent = exponent

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.acquisition(X) + self.exponent * self.log_feasibility(X).sum(dim=-1)


class ChanceConstrained(_Wrapping):
    """An acquisition restricted to a chance constraint's region, slack >= 0 (log P(feasible) - log floor, the
    smallest over the constraints), by an exact penalty (weight x violation, in log units): above the
    acquisition's largest slope, its constrained maximiser is a maximiser of the penalised one. Why not
    SLSQP's nonlinear constraints: BoTorch then optimises the restarts one by one (on the twin 13-28 s per
    proposal against 4-8 s)."""

    def __init__(self, acquisition: AcquisitionFunction, slack, weight: float = 1e3) -> None:
        super().__init__(acquisition)
        self.slack = slack
        self.weight = weight

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        violation = (-self.slack(X)).clamp_min(0.0).sum(dim=-1)
        return self.acquisition(X) - self.weight * violation


class PhysicsGuess(AcquisitionFunction):
    """The planner's own estimate of the objective (no model, no data) as an acquisition, so that the first
    experiment is searched like every other: on the simplex, inside the chance constraint. Divided by its
    range over the space (``scale``), so that the chance constraint's penalty outweighs it as it outweighs a
    log-EI."""

    def __init__(self, estimate, columns: torch.Tensor, scale: float) -> None:
        super().__init__(model=None)
        self.estimate = estimate
        self.columns = columns
        self.scale = scale

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.estimate(X[..., self.columns]).sum(dim=-1) / self.scale


class BalanceCompleted(_Wrapping):
    """An acquisition of the free coordinates only: the balance element's fraction is filled in as 1 - the
    others' sum. Where the free elements' bounds already keep the balance inside its own, the simplex is then
    a box, and the restarts run under L-BFGS-B instead of SLSQP with an equality constraint (on the twin
    about a third of the evaluations; one SLSQP step also solves a QP over all restarts at once)."""

    def __init__(self, acquisition: AcquisitionFunction, kept: torch.Tensor, balance: int,
                 composition: torch.Tensor) -> None:
        super().__init__(acquisition)
        self.kept = kept  # the columns optimised, in order: all but the balance element's
        self.balance = balance  # the balance element's column
        self.composition = composition  # positions, within kept, of the free elements' fractions

    def complete(self, X: torch.Tensor) -> torch.Tensor:
        full = X.new_zeros(*X.shape[:-1], len(self.kept) + 1)
        full[..., self.kept] = X
        full[..., self.balance] = 1.0 - X[..., self.composition].sum(dim=-1)
        return full

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.acquisition(self.complete(X))
