"""A Gaussian-process regression surrogate (BoTorch ``SingleTaskGP``) on unit-cube inputs.

Plain torch/BoTorch: no Ray, no bus. The surrogate-host agent wraps it; the BO planner builds on
the same model class.
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood


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
        train_x = torch.as_tensor(x, dtype=torch.double)
        train_y = torch.as_tensor(y, dtype=torch.double)
        model = SingleTaskGP(train_x, train_y, outcome_transform=Standardize(m=1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        self.model = model
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            raise RuntimeError("the surrogate has not been fitted; call fit first")
        with torch.no_grad():
            posterior = self.model.posterior(torch.as_tensor(np.atleast_2d(x), dtype=torch.double))
            mean = posterior.mean.squeeze(-1).numpy()
            std = posterior.variance.clamp_min(0.0).sqrt().squeeze(-1).numpy()
        return mean, std
