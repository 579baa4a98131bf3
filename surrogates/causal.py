"""Structural causal model of the alloy lab (pyro): interventions, back-door adjustment, counterfactuals.

Past lab data are confounded: an unrecorded practice chose both which alloys were made and how they
were heat-treated, so E[Y | C = c] (what a regression on the ledger answers) is not E[Y | do(C = c)]
(what making alloy c would give). This module answers the second question, three ways:

- **Identification** (:mod:`sdl.surrogates.identification`): the graph, with its latent common
  causes, is given in config; every estimate here first asks :func:`identify` whether a back-door
  or a front-door set identifies it, and is refused with the open path when neither does.
- **Back-door adjustment** (:func:`backdoor_effect`): E[Y | do(T = t)] = mean over the recorded rows
  of E[Y | T = t, Z = z_i], with E[Y | T, Z] a Bayesian regression (:class:`BayesianRegression`: a
  Gaussian process by default), so the estimate carries posterior uncertainty. :func:`naive_effect`
  is the regression on T alone, for comparison.
- **Front-door adjustment** (:func:`frontdoor_effect`): where the confounder is unrecorded but a
  mediator carries the whole effect, E[Y | do(t)] = sum_m P(m | t) sum_t' P(t') E[Y | m, t'].
  :func:`identified_effect` picks whichever identifies the effect.
- **Simulation from the fitted SCM** (:class:`StructuralCausalModel`): every observed variable with
  recorded parents is ``f(parents) + u`` (additive noise, ``f`` the same kind of Bayesian
  regression; ``u`` each recorded row's own residual); variables without recorded parents
  (composition and process, confounded by the latent practice) are drawn jointly from the recorded rows. Interventions are ``pyro.poutine.do``
  on the model; counterfactuals are abduction (the exogenous ``u`` of a recorded specimen, exact for
  additive noise), action (``do``) and prediction (the model conditioned on those ``u`` with
  ``pyro.poutine.condition``). Each mechanism is learned as E[v | recorded parents], which is v's
  mechanism only when no latent cause of v reaches its parents; simulation and counterfactuals are
  refused, with the reason and the estimator that does apply, where that fails.

Plain torch + pyro + networkx; no Ray or ZeroMQ. The data are a :class:`pandas.DataFrame` with one
row per specimen; :func:`specimen_frame` builds one from made specimens.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pydantic import Field, model_validator
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal

from sdl.settings import Section, load_yaml
from sdl.surrogates.identification import (
    CausalGraph,
    GraphConfig,
    Identification,
    NotIdentifiable,
    identify,
    simulation_check,
)

DTYPE = torch.double
# Monotone bijections a variable may be modelled on (forward, inverse); e.g. log1p for a precipitate
# radius that is 0 in some regimes and ~100 nm in others.
TRANSFORMS = {"log": (torch.log, torch.exp), "log1p": (torch.log1p, torch.expm1)}


# -- mechanisms ----------------------------------------------------------------------------------


def polynomial_features(x: torch.Tensor, degree: int) -> torch.Tensor:
    """(..., p) -> (..., k): every monomial of degree 1..degree in the p columns (no constant)."""
    columns = [x[..., list(idx)].prod(dim=-1)
               for d in range(1, degree + 1)
               for idx in itertools.combinations_with_replacement(range(x.shape[-1]), d)]
    return torch.stack(columns, dim=-1)


class BayesianRegression:
    """y = f(x) + N(0, sigma^2), f linear in features phi(x) of standardised x; y standardised.

    ``kind="gp"`` (the default mechanism): a Gaussian process with an ARD RBF kernel whose
    hyperparameters (lengthscales, signal variance, noise) pyro's ``contrib.gp`` fits by marginal
    likelihood, then represented by random Fourier features (Rahimi & Recht) with the exact Gaussian
    posterior over their weights, so that posterior *function* draws can be evaluated anywhere in
    one matrix product (the SCM runs each draw over thousands of points; a GP's joint sampling would
    not). ``kind="polynomial"``: monomials up to ``degree``, priors w ~ N(0, prior_scale^2),
    b ~ N(0, 1), sigma ~ HalfNormal(1), posterior a full-covariance Gaussian by SVI (pyro's
    AutoMultivariateNormal); degree 1 is the linear-Gaussian SCM.

    :attr:`samples` holds S draws of (b, w, sigma); every prediction is vectorised over them.
    """

    def __init__(self, settings: MechanismSettings | None = None, *, seed: int = 0) -> None:
        self.settings = settings or MechanismSettings()
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> BayesianRegression:
        y = torch.tensor(np.array(y, dtype=float), dtype=DTYPE)
        x = torch.tensor(np.array(x, dtype=float), dtype=DTYPE).reshape(len(y), -1)
        spread = x.std(0)
        # A column that never varied carries no information; scaling it by 1 keeps it harmless.
        self.x_mean, self.x_std = x.mean(0), torch.where(spread > 1e-9 * (x.abs().mean(0) + 1), spread, torch.ones_like(spread))
        self.y_mean, self.y_std = y.mean(), y.std().clamp_min(1e-12)
        z, target = (x - self.x_mean) / self.x_std, (y - self.y_mean) / self.y_std
        torch.manual_seed(self.seed)
        pyro.set_rng_seed(self.seed)
        if self.settings.kind == "gp":
            self._fit_gp(z, target)
        else:
            self._fit_polynomial(z, target)
        return self

    # -- gp: hyperparameters by pyro.contrib.gp, posterior draws through random Fourier features --

    def _fit_gp(self, z: torch.Tensor, target: torch.Tensor) -> None:
        import pyro.contrib.gp as gp

        s = self.settings
        p = z.shape[1]
        kernel = gp.kernels.RBF(input_dim=p, variance=torch.tensor(1.0, dtype=DTYPE),
                                lengthscale=torch.ones(p, dtype=DTYPE))
        model = gp.models.GPRegression(z, target, kernel, noise=torch.tensor(0.1, dtype=DTYPE), jitter=1e-6)
        pyro.clear_param_store()
        gp.util.train(model, torch.optim.Adam(model.parameters(), lr=0.05), num_steps=s.gp_steps)
        with torch.no_grad():
            lengthscale = kernel.lengthscale.detach().clone()
            signal = kernel.variance.detach().clone()
            noise = model.noise.detach().clone().clamp_min(1e-8)
        generator = torch.Generator().manual_seed(self.seed)
        d = s.rff_features
        self.frequencies = torch.randn(p, d, generator=generator, dtype=DTYPE) / lengthscale[:, None]
        self.phases = 2 * math.pi * torch.rand(d, generator=generator, dtype=DTYPE)
        self.amplitude = torch.sqrt(2 * signal / d)
        phi = self._features(z)
        # Weights w ~ N(0, I): posterior N(A^-1 phi^T y / noise, A^-1), A = phi^T phi / noise + I.
        precision = phi.T @ phi / noise + torch.eye(d, dtype=DTYPE)
        cholesky = torch.linalg.cholesky(precision)
        mean = torch.cholesky_solve((phi.T @ target / noise)[:, None], cholesky)[:, 0]
        eps = torch.randn(s.posterior_samples, d, generator=generator, dtype=DTYPE)
        # x = L^-T eps has covariance (L L^T)^-1 = A^-1.
        draws = mean + torch.linalg.solve_triangular(cholesky.T, eps.T, upper=True).T
        self.samples = {"w": draws, "b": torch.zeros(s.posterior_samples, 1, dtype=DTYPE),
                        "sigma": noise.sqrt().expand(s.posterior_samples, 1).clone()}
        pyro.clear_param_store()

    # -- polynomial: a Bayesian linear model by SVI --

    def _polynomial_model(self, phi: torch.Tensor, y: torch.Tensor | None = None) -> None:
        k = phi.shape[-1]
        w = pyro.sample("w", dist.Normal(torch.zeros(k, dtype=DTYPE), self.settings.prior_scale).to_event(1))
        b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=DTYPE), 1.0))
        sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(1.0, dtype=DTYPE)))
        with pyro.plate("rows", phi.shape[0]):
            pyro.sample("y", dist.Normal(b + phi @ w, sigma), obs=y)

    def _fit_polynomial(self, z: torch.Tensor, target: torch.Tensor) -> None:
        s = self.settings
        raw = polynomial_features(z, s.degree)
        self.feature_mean, self.feature_std = raw.mean(0), raw.std(0).clamp_min(1e-9)
        phi = self._features(z)
        pyro.clear_param_store()
        guide = AutoMultivariateNormal(self._polynomial_model, init_scale=0.05)
        optimizer = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.1 ** (1 / s.svi_steps)})
        svi = SVI(self._polynomial_model, guide, optimizer, Trace_ELBO())
        for _ in range(s.svi_steps):
            svi.step(phi, target)
        draws = Predictive(self._polynomial_model, guide=guide, num_samples=s.posterior_samples,
                           return_sites=["w", "b", "sigma"])(phi)
        self.samples = {k: v.detach().reshape(s.posterior_samples, -1) for k, v in draws.items()}
        pyro.clear_param_store()

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        if self.settings.kind == "gp":
            return self.amplitude * torch.cos(z @ self.frequencies + self.phases)
        return (polynomial_features(z, self.settings.degree) - self.feature_mean) / self.feature_std

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """E[y | x] per posterior draw, in y's units: x (n, p) shared by all draws, or (S, n, p) one per
        draw (as inside the SCM, where parents are themselves drawn) -> (S, n)."""
        x = torch.as_tensor(x, dtype=DTYPE)
        w, b = self.samples["w"], self.samples["b"]  # (S, k), (S, 1)
        if x.dim() == 2:
            linear = (self._features((x - self.x_mean) / self.x_std) @ w.T).T
        elif x.dim() == 3 and x.shape[0] == w.shape[0]:
            # Features per draw are S x n x k numbers: evaluated a slice of rows at a time (~16 M
            # numbers each) so that thousands of rows x hundreds of draws stay within memory.
            step = max(1, (1 << 24) // (w.shape[0] * w.shape[1]))
            linear = torch.cat([torch.einsum("snk,sk->sn", self._features((part - self.x_mean) / self.x_std), w)
                                for part in x.split(step, dim=1)], dim=1)
        else:
            raise ValueError(f"inputs of shape {tuple(x.shape)}: expected (n, p) or ({w.shape[0]}, n, p)")
        return self.y_mean + self.y_std * (b + linear)

    @property
    def noise_std(self) -> torch.Tensor:
        """sigma per posterior draw, in y's units: (S,)."""
        return self.y_std * self.samples["sigma"][:, 0]


# -- the structural causal model -----------------------------------------------------------------


class MechanismSettings(Section):
    """How each mechanism (and the back-door and naive regressions) is learned."""

    kind: Literal["gp", "polynomial"] = Field(
        default="gp", description="gp: ARD-RBF Gaussian process (random Fourier features); polynomial: Bayesian linear")
    rff_features: int = Field(default=512, ge=16, le=8192, description="gp: random Fourier features per mechanism")
    gp_steps: int = Field(default=300, ge=10, le=10_000, description="gp: Adam steps on the marginal likelihood")
    degree: int = Field(default=2, ge=1, le=4, description="polynomial: degree of the features (1: linear)")
    prior_scale: float = Field(default=1.0, gt=0, description="polynomial: prior sd of each standardised coefficient")
    svi_steps: int = Field(default=1500, ge=50, le=100_000, description="polynomial: SVI steps")
    posterior_samples: int = Field(default=200, ge=10, le=10_000, description="draws every estimate averages over")
    noise: Literal["empirical", "gaussian"] = Field(
        default="empirical", description="exogenous noise when simulating: each recorded row's own, or N(0, sigma^2)")
    seed: int = 0


class CausalConfig(Section):
    """The lab's causal graph and how to learn it (``configs/causal.yaml``)."""

    graph: GraphConfig
    elements: list[str] = Field(min_length=2, description="the alloy's elements; variables are x_<element>")
    balance: str = Field(description="the element that takes the remainder (not a variable of the graph)")
    outcome: str = Field(default="hardness_hv", description="the property to predict")
    transforms: dict[str, Literal["log", "log1p"]] = Field(
        default_factory=dict, description="variables the mechanisms see on a log scale")
    mechanisms: MechanismSettings = MechanismSettings()

    @model_validator(mode="after")
    def _consistent(self) -> CausalConfig:
        if self.balance not in self.elements:
            raise ValueError(f"balance {self.balance} is not among the elements {self.elements}")
        graph = CausalGraph(self.graph)
        if self.outcome not in graph.observed:
            raise ValueError(f"outcome {self.outcome} is not a variable of the graph: {graph.observed}")
        unknown = sorted(set(self.transforms) - set(graph.observed))
        if unknown:
            raise ValueError(f"transforms name {unknown}, which are not variables of the graph {graph.observed}")
        if f"x_{self.balance}" in graph.observed:
            raise ValueError(f"x_{self.balance} (the balance) is a function of the other fractions; leave it out of the graph")
        return self

    def causal_model(self) -> StructuralCausalModel:
        """The (unfitted) SCM this config describes."""
        return StructuralCausalModel(CausalGraph(self.graph), self.mechanisms, self.transforms)


def load_causal_config(path: str | Path) -> CausalConfig:
    return load_yaml(CausalConfig, path, "causal config")


class StructuralCausalModel:
    """Fit with :meth:`fit`; then :meth:`interventional_means`, :meth:`counterfactual`, or the pyro
    model itself (:meth:`model`) under ``poutine.do`` / ``poutine.condition``."""

    def __init__(self, graph: CausalGraph, settings: MechanismSettings | None = None,
                 transforms: dict[str, str] | None = None) -> None:
        self.graph = graph
        self.settings = settings or MechanismSettings()
        self.transforms = dict(transforms or {})
        unknown = sorted(set(self.transforms) - set(graph.observed))
        if unknown:
            raise ValueError(f"transforms name {unknown}, which are not variables of the graph {graph.observed}")
        self.mechanisms: dict[str, BayesianRegression] = {}
        self._simulable: dict[tuple[tuple[str, ...], str], Identification] = {}

    def check_simulable(self, treatments: Iterable[str], outcome: str) -> Identification:
        """Raise :class:`NotIdentifiable`, saying why, unless simulating do(treatments) with these
        mechanisms gives E[outcome | do(treatments)] (:func:`~sdl.surrogates.identification.simulation_check`)."""
        key = (tuple(sorted(treatments)), outcome)
        if key not in self._simulable:
            self._simulable[key] = simulation_check(self.graph, list(key[0]), outcome)
        return self._simulable[key]

    def _forward(self, v: str, x: torch.Tensor) -> torch.Tensor:
        return TRANSFORMS[self.transforms[v]][0](x) if v in self.transforms else x

    def _inverse(self, v: str, x: torch.Tensor) -> torch.Tensor:
        return TRANSFORMS[self.transforms[v]][1](x) if v in self.transforms else x

    def fit(self, data: pd.DataFrame) -> StructuralCausalModel:
        missing = [v for v in self.graph.observed if v not in data.columns]
        if missing:
            raise ValueError(f"the data lack the graph's variables {missing}; columns: {sorted(data.columns)}")
        frame = data[self.graph.observed].astype(float)
        if frame.isna().any().any():
            raise ValueError("the data have missing values in the graph's variables; drop or fill them first")
        if len(frame) < 10:
            raise ValueError(f"{len(frame)} rows are too few to learn the mechanisms (need at least 10)")
        bad = [v for v, t in self.transforms.items() if t in ("log", "log1p")
               and (frame[v] <= (0.0 if t == "log" else -1.0)).any()]
        if bad:
            raise ValueError(f"{bad} have values outside their transform's domain ({self.transforms})")
        # Mechanisms are learned, and the model runs, on the transformed scale; callers see recorded units.
        self.data = {v: self._forward(v, torch.tensor(np.array(frame[v].to_numpy()), dtype=DTYPE))
                     for v in self.graph.observed}
        self.ranges = {v: (float(x.min()), float(x.max())) for v, x in self.data.items()}
        s = self.settings
        for i, v in enumerate(self.graph.observed):
            parents = self.graph.parents(v)
            if parents:
                inputs = torch.stack([self.data[p] for p in parents], dim=-1)
                self.mechanisms[v] = BayesianRegression(s, seed=s.seed + i).fit(inputs.numpy(), self.data[v].numpy())
        # Each recorded row's exogenous noise per posterior draw (its abduction): with noise
        # "empirical" the model draws a row's roots together with its own noise, so the noise keeps
        # whatever shape and dependence on the regime it has, instead of an assumed Gaussian.
        self.residuals = {}
        for v, mechanism in self.mechanisms.items():
            parents = torch.stack([self.data[p] for p in self.graph.parents(v)], dim=-1)
            self.residuals[v] = self.data[v] - mechanism.mean(parents)
        return self

    @property
    def rows(self) -> int:
        return len(next(iter(self.data.values())))

    def model(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The SCM as a pyro program over the recorded ``rows`` (indices): values (S x len(rows)) per variable.

        Sites: each variable ``v`` (a Delta at its value, so ``poutine.do`` can replace it) and, for
        every variable with recorded parents, its exogenous noise ``u_v``.
        """
        S = self.settings.posterior_samples
        values: dict[str, torch.Tensor] = {}
        for v in self.graph.observed:
            parents = self.graph.parents(v)
            if not parents:
                value = self.data[v][rows].expand(S, len(rows))
            else:
                mechanism = self.mechanisms[v]
                inputs = [values[p] for p in parents]
                if all(t.stride(0) == 0 for t in inputs):  # the same for every draw (recorded or set): once
                    mean = mechanism.mean(torch.stack([t[0] for t in inputs], dim=-1))
                else:
                    mean = mechanism.mean(torch.stack(inputs, dim=-1))
                if self.settings.noise == "empirical":
                    u = pyro.sample(f"u_{v}", dist.Delta(self.residuals[v][:, rows].expand_as(mean)))
                else:
                    u = pyro.sample(f"u_{v}", dist.Normal(torch.zeros_like(mean), mechanism.noise_std[:, None].expand_as(mean)))
                # Kept inside the recorded range: the mechanisms are not trusted beyond it, and a
                # noise draw must not make a precipitate radius negative.
                value = torch.clamp(mean + u, *self.ranges[v])
            # A do() hands back the intervened value (a scalar, say) in place of the Delta's.
            values[v] = torch.broadcast_to(pyro.sample(v, dist.Delta(value)), (S, len(rows)))
        return values

    def _run(self, rows: torch.Tensor, interventions: dict[str, float | torch.Tensor] | None = None,
             exogenous: dict[str, torch.Tensor] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        program = self.model
        if exogenous:
            program = poutine.condition(program, data=exogenous)
        if interventions:
            unknown = [v for v in interventions if v not in self.graph.observed]
            if unknown:
                raise ValueError(f"cannot intervene on {unknown}: not recorded variables of the graph")
            program = poutine.do(program, data={k: self._forward(k, torch.as_tensor(v, dtype=DTYPE))
                                                for k, v in interventions.items()})
        pyro.set_rng_seed(seed)
        with torch.no_grad():
            values = program(rows)
        return {v: self._inverse(v, x) for v, x in values.items()}

    def interventional_means(self, interventions: dict[str, np.ndarray], outcome: str, *,
                             rows_per_candidate: int = 64, seed: int = 0, chunk: int = 4096) -> np.ndarray:
        """E[outcome | do(interventions[k][c] for every k)] per posterior draw and candidate c: (S, C).

        Many candidates at once: each is paired with the same seeded subset of recorded rows (the
        distribution of everything not intervened on; all of them when ``rows_per_candidate`` >= the
        recorded rows), and the model runs on the stacked pairs."""
        self.check_simulable(interventions, outcome)
        lengths = {len(np.atleast_1d(v)) for v in interventions.values()}
        if len(lengths) != 1:
            raise ValueError(f"every intervened variable needs one value per candidate; got lengths {sorted(lengths)}")
        n_candidates = lengths.pop()
        rng = np.random.default_rng(seed)
        subset = rng.choice(self.rows, size=min(rows_per_candidate, self.rows), replace=False)
        per = len(subset)
        step = max(1, chunk // per)
        out = []
        for start in range(0, n_candidates, step):
            stop = min(start + step, n_candidates)
            rows = torch.as_tensor(np.tile(subset, stop - start))
            values = {k: torch.as_tensor(np.repeat(np.asarray(v, float)[start:stop], per), dtype=DTYPE)
                      for k, v in interventions.items()}
            y = self._run(rows, values, seed=seed + start)[outcome]  # (S, candidates x rows)
            out.append(y.reshape(y.shape[0], stop - start, per).mean(-1))
        return torch.cat(out, dim=1).numpy()

    def abduct(self, row: int) -> dict[str, torch.Tensor]:
        """Exogenous noise of recorded row ``row`` per posterior draw (additive noise: exact), as
        :meth:`fit` computed it for every row."""
        return {f"u_{v}": residual[:, [row]] for v, residual in self.residuals.items()}

    def check_counterfactual(self, changes: Iterable[str]) -> None:
        """Raise :class:`NotIdentifiable` unless every mechanism downstream of ``changes`` is one the
        SCM may simulate (a confounded one would answer with a biased mechanism)."""
        changes = list(changes)
        unknown = [v for v in changes if v not in self.graph.observed]
        if unknown:
            raise ValueError(f"cannot change {unknown}: not recorded variables of the graph {self.graph.observed}")
        for v in [v for v in self.graph.observed if v in self.graph.descendants(changes)]:
            self.check_simulable(changes, v)

    def counterfactual(self, row: int, changes: dict[str, float]) -> dict[str, torch.Tensor]:
        """Abduction, action, prediction: every variable (S,) had ``changes`` been made to row ``row``.

        Refused (:meth:`check_counterfactual`) where a mechanism downstream of the changes is confounded."""
        self.check_counterfactual(changes)
        values = self._run(torch.tensor([row]), changes, exogenous=self.abduct(row))
        return {v: x[:, 0] for v, x in values.items()}


# -- effect estimates from data ------------------------------------------------------------------


@dataclass(frozen=True)
class EffectCurve:
    """E[outcome | do(treatment = value)] (or E[outcome | treatment = value]) per value: posterior mean and sd."""

    treatment: str
    values: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    method: str
    adjustment: tuple[str, ...] = ()  # back-door: the set averaged over
    mediators: tuple[str, ...] = ()  # front-door: the set the effect passes through

    def difference(self, i: int = -1, j: int = 0) -> float:
        return float(self.mean[i] - self.mean[j])


def backdoor_effect(data: pd.DataFrame, graph: CausalGraph, treatment: str, outcome: str, values: Sequence[float],
                    *, adjustment: Sequence[str] | None = None, settings: MechanismSettings | None = None) -> EffectCurve:
    """E[Y | do(T = t)] = (1/n) sum_i E[Y | T = t, Z = z_i], Z a back-door set (found, or the one given and checked).

    Refused (:class:`NotIdentifiable`) when no back-door set exists, naming the front-door set when
    the graph offers one (:func:`frontdoor_effect`)."""
    if adjustment is None:
        found = identify(graph, treatment, outcome)
        if found.method != "back-door":
            raise NotIdentifiable(f"no back-door set identifies {outcome} under do({treatment}); "
                                  f"it is identified by {found.describe()}: use the front-door estimate")
        z = list(found.adjustment)
    else:
        z = list(adjustment)
    graph.check_adjustment_set([treatment], outcome, z)
    s = settings or MechanismSettings()
    columns = [treatment, *z]
    regression = BayesianRegression(s, seed=s.seed).fit(data[columns].to_numpy(float), data[outcome].to_numpy(float))
    base = torch.tensor(np.array(data[columns].to_numpy(float)), dtype=DTYPE)
    means = []
    for t in values:
        x = base.clone()
        x[:, 0] = float(t)
        means.append(regression.mean(x).mean(dim=1))
    stacked = torch.stack(means, dim=1)  # (S, len(values))
    return EffectCurve(treatment, np.asarray(values, float), stacked.mean(0).numpy(), stacked.std(0).numpy(),
                       "back-door adjustment", tuple(z))


def frontdoor_effect(data: pd.DataFrame, graph: CausalGraph, treatment: str, outcome: str, values: Sequence[float],
                     *, mediators: Sequence[str] | None = None, settings: MechanismSettings | None = None,
                     rows: int = 64) -> EffectCurve:
    """E[Y | do(T = t)] = sum_m P(m | t) sum_t' P(t') E[Y | m, t'], M a front-door set (found, or the
    one given and checked).

    P(m | t) is m = g(t) + r with g a Bayesian regression per mediator and r the recorded rows'
    residual vectors (additive noise, kept jointly across mediators); P(t') the recorded treatments;
    E[Y | m, t'] a Bayesian regression. Both sums run over ``rows`` seeded recorded rows each, per
    posterior draw, so the sd carries the uncertainty of both regressions."""
    if mediators is None:
        found = identify(graph, treatment, outcome)
        if found.method != "front-door":
            raise NotIdentifiable(f"{outcome} under do({treatment}) is identified by {found.describe()}; "
                                  "the front-door estimate needs a graph where back-door adjustment fails")
        m = list(found.mediators)
    else:
        m = list(mediators)
        graph.check_names([treatment], outcome)
        why = graph.front_door_violation([treatment], outcome, m)
        if why is not None:
            raise NotIdentifiable(f"{m} is not a front-door set for {treatment} -> {outcome}: {why}")
    s = settings or MechanismSettings()
    t_recorded = torch.tensor(data[[treatment]].to_numpy(float), dtype=DTYPE)
    g = [BayesianRegression(s, seed=s.seed + 1 + k).fit(t_recorded.numpy(), data[v].to_numpy(float))
         for k, v in enumerate(m)]
    residuals = torch.stack([torch.tensor(data[v].to_numpy(float), dtype=DTYPE) - model.mean(t_recorded)
                             for v, model in zip(m, g)], dim=-1)  # (S, n, K): each draw's own residuals
    h = BayesianRegression(s, seed=s.seed).fit(data[[*m, treatment]].to_numpy(float), data[outcome].to_numpy(float))
    rng = np.random.default_rng(s.seed)
    n = len(data)
    i = torch.as_tensor(rng.choice(n, size=min(rows, n), replace=False))
    j = torch.as_tensor(rng.choice(n, size=min(rows, n), replace=False))
    means = []
    for t in values:
        at_t = torch.stack([model.mean(torch.tensor([[float(t)]], dtype=DTYPE)) for model in g], dim=-1)  # (S, 1, K)
        m_draws = at_t + residuals[:, i, :]  # (S, R, K): P(m | t)
        pairs = torch.cat([m_draws.repeat_interleave(len(j), dim=1),
                           t_recorded[j].repeat(len(i), 1).expand(m_draws.shape[0], -1, -1)], dim=-1)
        means.append(h.mean(pairs).mean(dim=1))  # sum over m and t' per draw
    stacked = torch.stack(means, dim=1)
    return EffectCurve(treatment, np.asarray(values, float), stacked.mean(0).numpy(), stacked.std(0).numpy(),
                       "front-door adjustment", mediators=tuple(m))


def identified_effect(data: pd.DataFrame, graph: CausalGraph, treatment: str, outcome: str, values: Sequence[float],
                      *, settings: MechanismSettings | None = None) -> EffectCurve:
    """E[Y | do(T = t)] by whatever identifies it (:func:`~sdl.surrogates.identification.identify`):
    back-door adjustment, else front-door; :class:`NotIdentifiable` with the reason otherwise."""
    found = identify(graph, treatment, outcome)
    if found.method == "back-door":
        return backdoor_effect(data, graph, treatment, outcome, values, adjustment=found.adjustment, settings=settings)
    return frontdoor_effect(data, graph, treatment, outcome, values, mediators=found.mediators, settings=settings)


def naive_effect(data: pd.DataFrame, treatment: str, outcome: str, values: Sequence[float],
                 *, settings: MechanismSettings | None = None) -> EffectCurve:
    """E[Y | T = t]: the regression of the outcome on the treatment alone (what correlation says)."""
    s = settings or MechanismSettings()
    regression = BayesianRegression(s, seed=s.seed).fit(data[[treatment]].to_numpy(float), data[outcome].to_numpy(float))
    means = regression.mean(torch.tensor(np.asarray(values, float), dtype=DTYPE)[:, None])  # (S, len(values))
    return EffectCurve(treatment, np.asarray(values, float), means.mean(0).numpy(), means.std(0).numpy(),
                       "conditional E[Y | T] (naive)")


def scm_effect(scm: StructuralCausalModel, treatment: str, outcome: str, values: Sequence[float]) -> EffectCurve:
    """E[Y | do(T = t)] by simulating the fitted SCM under ``poutine.do``, over every recorded row
    (refused where the SCM's mechanisms do not identify it: :meth:`StructuralCausalModel.check_simulable`)."""
    scm.check_simulable([treatment], outcome)
    draws = scm.interventional_means({treatment: np.asarray(values, float)}, outcome, rows_per_candidate=scm.rows)
    return EffectCurve(treatment, np.asarray(values, float), draws.mean(0), draws.std(0), "SCM simulation (do)")


# -- compositions as variables -------------------------------------------------------------------


def composition_change(row: dict[str, float], changes: dict[str, float], *, elements: Sequence[str],
                       balance: str, prefix: str = "x_") -> dict[str, float]:
    """The free-element variables after setting some fractions of a recorded composition.

    The balance element absorbs a change to a free element; setting the balance element itself
    scales the free elements in proportion (Ni = 0.25 in place of 0.20 takes 0.05 from the others
    by their shares). Refuses fractions outside [0, 1] and sums above 1.
    """
    known = set(elements)
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown elements {unknown}; the alloy has {sorted(known)}")
    for e, v in changes.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{e}={v}: a mole fraction lies in [0, 1]")
    free = [e for e in elements if e != balance]
    x = {e: float(row[f"{prefix}{e}"]) for e in free}
    if balance in changes:
        if len(changes) > 1:
            raise ValueError(f"set either the balance element {balance} or free elements, not both")
        total = math.fsum(x.values())
        if total <= 0:
            raise ValueError("no free elements to rescale")
        x = {e: v * (1.0 - changes[balance]) / total for e, v in x.items()}
    else:
        x.update(changes)
        if math.fsum(x.values()) > 1.0 + 1e-12:
            raise ValueError(f"fractions {x} sum above 1: no room for the balance element {balance}")
    return {f"{prefix}{e}": v for e, v in x.items()}


# -- data from a ledger --------------------------------------------------------------------------


def route_features(route: Sequence) -> dict[str, float]:
    """Process variables of a heat-treatment route: solution temperature, ageing temperature and
    log10 ageing time (NaN where the route has no such step)."""
    solution = [s for s in route if s.operation == "solutionise"]
    ageing = [s for s in route if s.operation == "age"]
    age_s = sum(s.duration_s for s in ageing)
    return {
        "solution_temperature_k": max(s.temperature_k for s in solution) if solution else math.nan,
        "age_temperature_k": ageing[-1].temperature_k if ageing else math.nan,
        "age_log10_duration_s": math.log10(age_s) if age_s > 0 else math.nan,
    }


def specimen_frame(specimens: Iterable[tuple[str, Mapping[str, float], Sequence]]) -> pd.DataFrame:
    """One row per finished specimen, given as (id, measurements, heat-treatment route): its
    measurements and route variables, indexed by the id."""
    rows = {name: {**measurements, **route_features(route)} for name, measurements, route in specimens}
    if not rows:
        raise ValueError("no finished specimens to learn from")
    return pd.DataFrame.from_dict(rows, orient="index")


# -- plots ---------------------------------------------------------------------------------------


def plot_effects(curves: Sequence[EffectCurve], path: str | Path, *, outcome: str, truth: np.ndarray | None = None,
                 title: str | None = None) -> Path:
    """Effect curves with +-2 sd bands (and the truth where known) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if truth is not None:
        ax.plot(curves[0].values, truth, "k-", lw=2, label="truth")
    for curve, color in zip(curves, ("C0", "C1", "C3", "C2")):
        label = curve.method + (f" | adjusting for {', '.join(curve.adjustment)}" if curve.adjustment else "") \
            + (f" | through {', '.join(curve.mediators)}" if curve.mediators else "")
        ax.plot(curve.values, curve.mean, color=color, marker="o", ms=3, label=label)
        ax.fill_between(curve.values, curve.mean - 2 * curve.std, curve.mean + 2 * curve.std, color=color, alpha=0.2)
    ax.set_xlabel(f"{curves[0].treatment} (set by intervention)")
    ax.set_ylabel(outcome)
    ax.set_title(title or f"E[{outcome} | do({curves[0].treatment})] and E[{outcome} | {curves[0].treatment}]")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_counterfactual(factual: dict[str, float], counterfactual: dict[str, torch.Tensor], variables: Sequence[str],
                        path: str | Path, *, title: str) -> Path:
    """Factual vs counterfactual value (with a 95 % interval) of each variable, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(variables), figsize=(2.4 * len(variables), 3.4), squeeze=False)
    for ax, v in zip(axes[0], variables):
        draws = counterfactual[v].numpy()
        lo, hi = np.quantile(draws, [0.025, 0.975])
        ax.bar([0, 1], [factual[v], draws.mean()], color=["C7", "C1"])
        ax.errorbar([1], [draws.mean()], yerr=[[draws.mean() - lo], [hi - draws.mean()]], color="k", capsize=4)
        ax.set_xticks([0, 1], ["recorded", "had it been"])
        ax.set_title(v, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
