"""Bayesian logistic-regression phase classifier (pyro) and the acquisition rules that pick the next
CALPHAD point: expected error reduction, and least confidence as the cheap alternative.

P(target phase state | x) = sigmoid(phi(x) . w) with polynomial features phi of the inputs scaled to
[0, 1] (composition fractions and temperature) and a Gaussian prior on w. The posterior comes from
pyro, by SVI with a full-covariance Gaussian guide (default) or by NUTS. Plain torch/pyro: no Ray.

Expected error reduction (Roy & McCallum 2001) asks, for each candidate, how much the expected
misclassification over a pool would drop after labelling it. Refitting pyro per candidate and label
would cost minutes, so the update uses the Gaussian (Laplace-like) form of the posterior: one
Newton step per hypothetical label, a rank-one Sherman-Morrison update of the covariance, and the
probit approximation of the predictive probability (MacKay 1992). That is written here because no
library offers it for a pyro posterior.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal


class BayesianLogisticClassifier:
    """Fit on (x, y in {0, 1}); predict the probability of class 1 with its posterior spread.

    ``bounds`` (k x 2, low/high per input) fixes the feature scaling; without it the first fit's
    data range is used. With ``warm_start`` a refit starts SVI from the previous posterior and runs
    ``warm_steps`` (active learning refits after every few labels, and 3000 steps each would cost
    seconds).
    """

    def __init__(self, *, degree: int = 2, prior_scale: float = 5.0, inference: Literal["svi", "nuts"] = "svi",
                 num_steps: int = 3000, num_samples: int = 400, warmup_steps: int = 200, seed: int = 0,
                 bounds: np.ndarray | None = None, warm_start: bool = False, warm_steps: int = 400) -> None:
        if degree < 1:
            raise ValueError(f"degree must be at least 1, got {degree}")
        if inference not in ("svi", "nuts"):
            raise ValueError(f"inference must be 'svi' or 'nuts', got {inference!r}")
        self.degree = degree
        self.prior_scale = prior_scale
        self.inference = inference
        self.num_steps = num_steps
        self.num_samples = num_samples
        self.warmup_steps = warmup_steps
        self.seed = seed
        self.warm_start = warm_start
        self.warm_steps = warm_steps
        self.weights: torch.Tensor | None = None  # posterior samples (num_samples x features)
        self._low: np.ndarray | None = None
        self._span: np.ndarray | None = None
        if bounds is not None:
            self._set_scaling(np.asarray(bounds, dtype=float))
        self._guide: AutoMultivariateNormal | None = None

    def _set_scaling(self, bounds: np.ndarray) -> None:
        if bounds.ndim != 2 or bounds.shape[1] != 2 or np.any(bounds[:, 1] < bounds[:, 0]):
            raise ValueError(f"bounds must be k x 2 rows of (low, high) with low <= high, got {bounds.tolist()}")
        self._low = bounds[:, 0]
        span = bounds[:, 1] - bounds[:, 0]
        self._span = np.where(span > 0, span, 1.0)

    @property
    def scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, span) of each input: features see (x - low) / span."""
        if self._low is None:
            raise RuntimeError("the classifier has not been fitted; call fit first")
        return self._low.copy(), self._span.copy()

    # -- features ------------------------------------------------------------------------------

    def scale(self, x: np.ndarray) -> torch.Tensor:
        if self._low is None:
            raise RuntimeError("the classifier has not been fitted; call fit first")
        z = (np.atleast_2d(np.asarray(x, dtype=float)) - self._low) / self._span
        return torch.as_tensor(z, dtype=torch.double)

    def features(self, x: np.ndarray) -> torch.Tensor:
        return polynomial_features(self.scale(x), self.degree)

    # -- inference -----------------------------------------------------------------------------

    def _model(self, phi: torch.Tensor, y: torch.Tensor | None = None) -> None:
        w = pyro.sample("w", dist.Normal(torch.zeros(phi.shape[1], dtype=phi.dtype), self.prior_scale).to_event(1))
        with pyro.plate("data", phi.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=phi @ w), obs=y)

    def fit(self, x: np.ndarray, y: np.ndarray) -> BayesianLogisticClassifier:
        x = np.atleast_2d(np.asarray(x, dtype=float))
        y = np.asarray(y, dtype=float).ravel()
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)} labels")
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("labels must be 0 or 1")
        if self._low is None:
            self._set_scaling(np.column_stack([x.min(axis=0), x.max(axis=0)]))
        elif x.shape[1] != len(self._low):
            raise ValueError(f"x has {x.shape[1]} columns but the classifier's bounds have {len(self._low)}")
        phi, labels = self.features(x), torch.as_tensor(y, dtype=torch.double)
        pyro.set_rng_seed(self.seed)
        if self.inference == "svi":
            steps = self.num_steps
            if self.warm_start and self._guide is not None:
                # The autoguide (a PyroModule) keeps its parameters: SVI resumes from the last posterior.
                guide, steps = self._guide, self.warm_steps
            else:
                pyro.clear_param_store()
                guide = AutoMultivariateNormal(self._model)
            svi = SVI(self._model, guide, pyro.optim.Adam({"lr": 0.08}), loss=Trace_ELBO())
            for _ in range(steps):
                svi.step(phi, labels)
            with torch.no_grad():
                self.weights = guide.get_posterior().sample((self.num_samples,))
            self._guide = guide
        else:
            pyro.clear_param_store()
            mcmc = MCMC(NUTS(self._model), num_samples=self.num_samples, warmup_steps=self.warmup_steps,
                        disable_progbar=True)
            mcmc.run(phi, labels)
            self.weights = mcmc.get_samples()["w"]
        return self

    def posterior_gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the weights, the form a planner needs for a differentiable P(class 1)."""
        if self.weights is None:
            raise RuntimeError("the classifier has not been fitted; call fit first")
        mean = self.weights.mean(dim=0)
        cov = torch.cov(self.weights.T) + 1e-9 * torch.eye(len(mean), dtype=mean.dtype)
        return mean.numpy(), cov.numpy()

    # -- prediction ----------------------------------------------------------------------------

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of P(class 1) at each row of ``x``."""
        if self.weights is None:
            raise RuntimeError("the classifier has not been fitted; call fit first")
        with torch.no_grad():
            probabilities = torch.sigmoid(self.features(x) @ self.weights.T)
        return probabilities.mean(dim=1).numpy(), probabilities.std(dim=1).numpy()

    def least_confidence(self, x: np.ndarray) -> np.ndarray:
        """Higher is more worth labelling: 1 - max(p, 1 - p), largest at p = 0.5."""
        p, _ = self.predict(x)
        return 1.0 - np.maximum(p, 1.0 - p)

    def expected_error_reduction(self, candidates: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """Expected misclassification rate over ``pool`` after labelling each candidate (lower is better)."""
        if self.weights is None:
            raise RuntimeError("the classifier has not been fitted; call fit first")
        mean, covariance = self.posterior_gaussian()
        mu, cov = torch.as_tensor(mean), torch.as_tensor(covariance)
        phi_c, phi_p = self.features(candidates), self.features(pool)
        p_c = probit_probability(phi_c @ mu, torch.einsum("ni,ij,nj->n", phi_c, cov, phi_c))
        s = p_c * (1 - p_c)  # Fisher information of one Bernoulli label
        cov_phi = phi_c @ cov  # C x d
        quad_c = (cov_phi * phi_c).sum(dim=1)
        # Sherman-Morrison: cov' = cov - s (cov phi)(cov phi)^T / (1 + s phi^T cov phi)
        gain = s / (1 + s * quad_c)
        pool_cov_phi = phi_p @ cov  # P x d
        cross = pool_cov_phi @ phi_c.T  # P x C: phi_p^T cov phi_c
        var_p = (pool_cov_phi * phi_p).sum(dim=1, keepdim=True) - gain * cross**2
        expected = torch.zeros(len(phi_c), dtype=mu.dtype)
        for label in (0.0, 1.0):
            # One Newton step: mu' = mu + cov' phi_c (y - p_c), with cov' phi_c = cov phi_c / (1 + s q).
            step = (label - p_c) / (1 + s * quad_c)
            mean_p = (phi_p @ mu)[:, None] + cross * step[None, :]
            prob = probit_probability(mean_p, var_p.clamp_min(0.0))
            error = torch.minimum(prob, 1 - prob).mean(dim=0)
            expected += (p_c if label == 1.0 else 1 - p_c) * error
        return expected.numpy()


def polynomial_features(z: torch.Tensor, degree: int) -> torch.Tensor:
    """[1, z_i, z_i z_j, ...] up to ``degree`` over the last dimension; differentiable in ``z``."""
    columns = [torch.ones_like(z[..., 0])]
    for d in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(z.shape[-1]), d):
            term = z[..., combo[0]]
            for i in combo[1:]:
                term = term * z[..., i]
            columns.append(term)
    return torch.stack(columns, dim=-1)


def probit_probability(mean_logit: torch.Tensor, var_logit: torch.Tensor) -> torch.Tensor:
    """E[sigmoid(a)] for a ~ N(mean, var), by the probit approximation (MacKay 1992)."""
    return torch.sigmoid(mean_logit / torch.sqrt(1.0 + math.pi * var_logit / 8.0))


def log_probit_probability(mean_logit: torch.Tensor, var_logit: torch.Tensor) -> torch.Tensor:
    """log of :func:`probit_probability`, computed stably for acquisition functions."""
    return torch.nn.functional.logsigmoid(mean_logit / torch.sqrt(1.0 + math.pi * var_logit / 8.0))
