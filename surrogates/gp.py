"""Gaussian-process regression (BoTorch ``SingleTaskGP``): the one GP builder of the project.

:func:`fit_single_task_gp` is what the BO planner models each objective and measured constraint
with; :class:`GaussianProcess` wraps it for unit-cube inputs as the surrogate agent serves it.
Plain torch/BoTorch: no Ray, no bus.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import ChainedInputTransform, FilterFeatures, InputTransform, Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.means import LinearMean, Mean
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior


class AppendComputedFeatures(InputTransform):
    """Appends ``f(X)`` (..., m) to the inputs X (..., d): quantities computed from the inputs (the
    planner's CALPHAD features of a composition) that the kernel sees beside them. Applied in
    training, evaluation and fantasies alike, so the model is a GP on (x, f(x)) everywhere."""

    is_one_to_many = False

    def __init__(self, f) -> None:
        super().__init__()
        self.f = f
        self.transform_on_train = True
        self.transform_on_eval = True
        self.transform_on_fantasize = True

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        return torch.cat([X, self.f(X).to(X)], dim=-1)


class LinearMeanOf(Mean):
    """A prior mean linear in some input columns (the physics features), weights and offset fitted with
    the GP's hyperparameters by marginal likelihood; the GP then models what the physics leaves.
    Weights and offset start at zero (gpytorch draws them at random), so a feature the data do not
    yet inform (no measurement where it varies) keeps no effect instead of a random one."""

    def __init__(self, columns: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("columns", torch.as_tensor(columns, dtype=torch.long))
        self.linear = LinearMean(input_size=len(columns))
        with torch.no_grad():
            self.linear.weights.zero_()
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[..., self.columns])


def fit_single_task_gp(x: torch.Tensor, y: torch.Tensor, *, bounds: torch.Tensor,
                       columns: torch.Tensor | None = None, features=None,
                       feature_bounds: torch.Tensor | None = None,
                       feature_role: Literal["kernel", "mean"] = "kernel",
                       lengthscale_prior: Literal["dim_scaled", "gamma"] = "dim_scaled",
                       hyperparameter_subset: int | None = None, seed: int = 0) -> SingleTaskGP:
    """A GP on ``x`` (n x d) -> ``y`` (n x m), noise inferred, outcomes standardised, inputs normalised
    over ``bounds`` (2 x d); only ``columns`` of x enter the kernel (all by default), so a coordinate
    that is a function of the others (a composition's balance element) does not get a lengthscale.
    With ``features`` (X -> (..., m)), quantities computed from the inputs normalised over
    ``feature_bounds`` (2 x m): ``feature_role`` "kernel" lets the kernel see them beside the inputs
    (a hybrid of physics-derived and raw inputs); "mean" puts them in a linear prior mean and keeps
    the kernel on the inputs (a GP on the residual of a fitted physics model).

    ``lengthscale_prior``: "dim_scaled" is BoTorch's default (RBF, log-normal prior scaled with the
    dimension, Hvarfner et al. 2024), which lets a few points make an input look irrelevant; "gamma" is
    BoTorch's earlier default (Matern-5/2, Gamma(3, 6) lengthscales, Gamma(2, 0.15) outputscale), which keeps
    the lengthscales short and the model uncertain away from its data.

    With more than ``hyperparameter_subset`` observations, the hyperparameters are fitted by marginal
    likelihood on that many of them, drawn at random (``seed``), and the returned GP conditions on all of
    them with those values ("subset of data" for the hyperparameters only: a few hundred points pin down
    a handful of lengthscales, and each likelihood step costs n^3; at 1,000 observations 7 s -> 0.5 s)."""
    options = {"bounds": bounds, "columns": columns, "features": features, "feature_bounds": feature_bounds,
               "feature_role": feature_role, "lengthscale_prior": lengthscale_prior}
    if hyperparameter_subset is None or len(x) <= hyperparameter_subset:
        return _fitted(_single_task_gp(x, y, **options))
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:hyperparameter_subset]
    # The subset is standardised by all of y, so that its hyperparameters (noise, mean, in standardised units)
    # mean the same in the full model.
    standardize = Standardize(m=y.shape[-1])
    standardize(y)
    fitted = _fitted(_single_task_gp(x[rows], y[rows], outcome_transform=standardize.eval(), **options))
    model = _single_task_gp(x, y, **options)
    model.load_state_dict({k: v for k, v in fitted.state_dict().items()
                           if k.startswith(("likelihood.", "covar_module.", "mean_module."))}, strict=False)
    return model.eval()


def _gamma_prior_kernel(n: int, active_dims: list[int] | None = None) -> ScaleKernel:
    """BoTorch's kernel before 0.12 (``get_matern_kernel_with_gamma_prior``), here with ``active_dims``."""
    return ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=n, active_dims=active_dims,
                                    lengthscale_prior=GammaPrior(3.0, 6.0)), outputscale_prior=GammaPrior(2.0, 0.15))


def _fitted(model: SingleTaskGP) -> SingleTaskGP:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # input-scaling and fit-restart warnings on small data sets
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


def _single_task_gp(x: torch.Tensor, y: torch.Tensor, *, bounds: torch.Tensor, columns: torch.Tensor | None,
                    features, feature_bounds: torch.Tensor | None, feature_role: str, lengthscale_prior: str,
                    outcome_transform: Standardize | None = None) -> SingleTaskGP:
    columns = torch.arange(x.shape[-1]) if columns is None else columns
    mean_module = None
    residual = features is not None and feature_role == "mean"  # the kernel sees the inputs, not the features
    kernel_inputs = len(columns) if features is None or residual else len(columns) + feature_bounds.shape[-1]
    active = list(range(len(columns))) if residual else None
    covar_module = _gamma_prior_kernel(kernel_inputs, active) if lengthscale_prior == "gamma" else (
        get_covar_module_with_dim_scaled_prior(ard_num_dims=kernel_inputs, active_dims=active) if residual else None)
    if features is None:
        inputs = ChainedInputTransform(free=FilterFeatures(feature_indices=columns),
                                       normalize=Normalize(d=len(columns), bounds=bounds[:, columns]))
    else:
        m = feature_bounds.shape[-1]
        kept = torch.cat([columns, x.shape[-1] + torch.arange(m)])
        inputs = ChainedInputTransform(
            physics=AppendComputedFeatures(features), free=FilterFeatures(feature_indices=kept),
            normalize=Normalize(d=len(kept), bounds=torch.cat([bounds[:, columns], feature_bounds.to(bounds)], dim=-1)))
        if residual:
            mean_module = LinearMeanOf(len(columns) + torch.arange(m))
    return SingleTaskGP(x, y, input_transform=inputs, outcome_transform=outcome_transform or Standardize(m=y.shape[-1]),
                        covar_module=covar_module, mean_module=mean_module)


class GaussianProcess:
    """Fit on (x in [0, 1]^d, y); predict posterior mean and std of the latent function."""

    def __init__(self) -> None:
        self.model: SingleTaskGP | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> GaussianProcess:
        x = np.atleast_2d(np.asarray(x, dtype=float))
        y = np.asarray(y, dtype=float).reshape(-1, 1)
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if len(x) < 2:
            raise ValueError(f"a GP needs at least 2 observations, got {len(x)}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("x and y must be finite")
        unit = torch.tensor([[0.0] * x.shape[1], [1.0] * x.shape[1]], dtype=torch.double)
        self.model = fit_single_task_gp(torch.as_tensor(x, dtype=torch.double), torch.as_tensor(y, dtype=torch.double),
                                        bounds=unit)
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            raise RuntimeError("the surrogate has not been fitted; call fit first")
        with torch.no_grad():
            posterior = self.model.posterior(torch.as_tensor(np.atleast_2d(x), dtype=torch.double))
            mean = posterior.mean.squeeze(-1).numpy()
            std = posterior.variance.clamp_min(0.0).sqrt().squeeze(-1).numpy()
        return mean, std
