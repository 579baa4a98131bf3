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
from typing import Any, Literal

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal

from sdl.experiment import DesignPoint

DTYPE = torch.double


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


def log_expected_logistic(mean_logit: torch.Tensor, var_logit: torch.Tensor, *, nodes: int = 32) -> torch.Tensor:
    """log E[sigmoid(z)] for z ~ N(mean, var), by Gauss-Hermite quadrature in log space.

    Where the probability is tiny this is what a planner needs: :func:`log_probit_probability`'s
    approximation decays like exp(-|mean| / sd) rather than exp(mean + var / 2), so an alloy far beyond
    a boundary kept log P around -8 where the true value is below -20, and on a log-EI scale that
    spans tens of nats the acquisition then preferred it to feasible alloys (issue 19)."""
    t, w = np.polynomial.hermite.hermgauss(nodes)
    t = torch.as_tensor(t, dtype=mean_logit.dtype)
    log_w = torch.as_tensor(np.log(w / math.sqrt(math.pi)), dtype=mean_logit.dtype)
    z = mean_logit.unsqueeze(-1) + torch.sqrt(2.0 * var_logit.clamp_min(0.0)).unsqueeze(-1) * t
    return torch.logsumexp(log_w + torch.nn.functional.logsigmoid(z), dim=-1)


# -- the posterior as planners use it ------------------------------------------------------------


class FeasibilityModel(BaseModel):
    """A learned P(target phase state | inputs) a planner evaluates (and differentiates) itself.

    Bayesian logistic regression on polynomial features (up to ``degree``) of the inputs scaled as
    (x - low) / span; the weights' posterior as a Gaussian (mean, covariance); P by the probit
    approximation. Inputs are element symbols (mole fractions) or process-parameter names.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[str] = Field(min_length=1)
    low: list[float]
    span: list[float]
    degree: int = Field(ge=1, le=6)
    weight_mean: list[float]
    weight_covariance: list[list[float]]
    calphad_calls: int = Field(ge=0)
    target: dict[str, Any] = Field(default_factory=dict, description="the phase state the classifier predicts")

    @model_validator(mode="after")
    def _shapes(self) -> FeasibilityModel:
        k = len(self.inputs)
        if len(self.low) != k or len(self.span) != k or any(s <= 0 for s in self.span):
            raise ValueError(f"low and span need {k} entries each (span > 0)")
        n = math.comb(k + self.degree, self.degree)  # polynomial terms up to the degree, constant included
        if len(self.weight_mean) != n or len(self.weight_covariance) != n or any(len(r) != n for r in self.weight_covariance):
            raise ValueError(f"{k} inputs at degree {self.degree} need {n} weights and an {n} x {n} covariance")
        return self

    @classmethod
    def from_classifier(cls, classifier: BayesianLogisticClassifier, *, inputs: list[str], calphad_calls: int,
                        target: dict[str, Any]) -> FeasibilityModel:
        """The Gaussian form of a fitted classifier's posterior, for a planner to evaluate itself."""
        mean, cov = classifier.posterior_gaussian()
        low, span = classifier.scaling
        return cls(inputs=inputs, low=low.tolist(), span=span.tolist(), degree=classifier.degree,
                   weight_mean=mean.tolist(), weight_covariance=cov.tolist(), calphad_calls=calphad_calls, target=target)


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
    by hand because the update runs inside the planner, on the Gaussian posterior it was sent, not on pyro's.
    """
    phi = classifier_features(model, columns)(x)
    w, covariance = laplace_logistic_update(phi, labels, torch.tensor(model.weight_mean, dtype=DTYPE),
                                            torch.tensor(model.weight_covariance, dtype=DTYPE), iterations=iterations)
    return model.model_copy(update={"weight_mean": w.tolist(), "weight_covariance": covariance.tolist()})


def laplace_logistic_update(phi: torch.Tensor, labels: torch.Tensor, prior_mean: torch.Tensor,
                            prior_covariance: torch.Tensor, *, known: torch.Tensor | None = None,
                            iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian posterior (mean, covariance) of logistic-regression weights with features ``phi``
    (n x k) and 0/1 ``labels``, from a Gaussian prior: damped Newton to the mode, the Hessian there.
    ``known`` (n): a fixed part of each logit, added to ``phi @ w``.

    Damped (backtracking on the log posterior, which is concave): a full Newton step from a steep
    prior overshoots when a verdict contradicts it, because the likelihood's curvature there is
    nearly zero. Undamped, one infeasible alloy the database called safe by 70 K flipped the sign of
    the CALPHAD margin's slope, and the posterior then jumped between absurd values from one
    experiment to the next (issue 19, the twin whose truth disagrees with the database)."""
    prior_precision = torch.linalg.inv(prior_covariance)
    known = torch.zeros(len(phi), dtype=phi.dtype) if known is None else known

    def log_posterior(w: torch.Tensor) -> torch.Tensor:
        z = known + phi @ w
        likelihood = (labels * torch.nn.functional.logsigmoid(z) + (1 - labels) * torch.nn.functional.logsigmoid(-z))
        d = w - prior_mean
        return likelihood.sum() - 0.5 * d @ prior_precision @ d

    w = prior_mean.clone()
    current = log_posterior(w)
    for _ in range(iterations):
        p = torch.sigmoid(known + phi @ w)
        gradient = phi.T @ (labels - p) - prior_precision @ (w - prior_mean)
        hessian = (phi.T * (p * (1 - p))) @ phi + prior_precision
        step = torch.linalg.solve(hessian, gradient)
        t = 1.0
        while t > 1e-8:  # Armijo backtracking: accept the first step length that raises the log posterior enough
            candidate = w + t * step
            value = log_posterior(candidate)
            if value >= current + 1e-4 * t * float(gradient @ step):
                break
            t *= 0.5
        else:
            break  # no ascent left along the Newton direction: at the mode to numerical precision
        w, current = candidate, value
        if (t * step).abs().max() < 1e-8:
            break
    p = torch.sigmoid(known + phi @ w)
    covariance = torch.linalg.inv((phi.T * (p * (1 - p))) @ phi + prior_precision)
    return w, 0.5 * (covariance + covariance.T)


def feasibility_probability(model: FeasibilityModel, points: list[DesignPoint]) -> np.ndarray:
    """P(feasible) at design points, for reports and benchmarks."""
    columns = list(model.inputs)
    x = torch.tensor([[p.composition[e] if p.composition is not None and e in p.composition.root
                       else p.parameters[e] for e in columns] for p in points], dtype=DTYPE)
    with torch.no_grad():
        return classifier_log_probability(model, columns)(x).exp().numpy()
