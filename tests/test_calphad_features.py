"""CALPHAD features for the BO planner: the planner's own database, tabulated once, interpolated in
torch exactly as scipy interpolates the same table, differentiable; the temperature margins; and the
feasibility model a far-off infeasible verdict cannot bend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.interpolate import RegularGridInterpolator

from sdl.env.calphad import BRITTLE, PhaseEquilibria
from sdl.surrogates.calphad_features import (
    DEFAULT_LADDER_K,
    FEATURES,
    SOLVUS_FRACTION,
    CalphadFeasibility,
    CalphadFeatures,
    temperature_margin,
)

BOUNDS = {"Al": (0.02, 0.14), "Co": (0.0, 0.15), "Cr": (0.0, 0.15)}
SOLUTION_K, AGEING_K = 1300.0, 1050.0


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("calphad") / "cache.sqlite"


@pytest.fixture(scope="module")
def features(cache):
    return CalphadFeatures(("Al", "Co", "Cr"), "Ni", BOUNDS, solution_temperature_k=SOLUTION_K,
                           ageing_temperature_k=AGEING_K, points_per_axis=3, cache_path=cache)


def test_temperature_margins_are_signed_distances_to_the_crossing():
    t = np.array([900.0, 1000.0, 1100.0, 1200.0, 1300.0])
    # gamma-prime-like: present below a solvus at 1150 K (crossing 0.01 halfway between 1100 and 1200)
    solvus = np.array([[0.3], [0.2], [0.02], [0.0], [0.0]])
    assert temperature_margin(solvus, t, 1300.0, 0.01)[0] == pytest.approx(1300 - 1150)
    assert temperature_margin(solvus, t, 1000.0, 0.01)[0] == pytest.approx(-(1150 - 1000))
    # never within tolerance, or always: the ladder's reach, with the sign
    assert temperature_margin(np.full((5, 1), 0.5), t, 1100.0, 0.01)[0] == -200.0
    assert temperature_margin(np.zeros((5, 1)), t, 1100.0, 0.01)[0] == 200.0
    # a phase window in the middle: the nearer crossing counts
    window = np.array([[0.0], [0.0], [0.0], [0.5], [0.0]])
    assert temperature_margin(window, t, 1000.0, 0.01)[0] == pytest.approx(1100 + 100 * 0.01 / 0.5 - 1000)


def test_features_interpolate_the_planners_own_table(features, cache):
    equilibria = PhaseEquilibria(elements=("Al", "Co", "Cr", "Ni"), cache_path=cache)
    axes = {e: np.linspace(lo, hi, 3) for e, (lo, hi) in BOUNDS.items()}
    # each margin's ladder: every default temperature, refined to 10 K steps within 60 K of its own
    ladders = {at: sorted({*DEFAULT_LADDER_K, *(at + np.arange(-60.0, 61.0, 10.0))}) for at in (SOLUTION_K, AGEING_K)}
    temperatures = sorted({*ladders[SOLUTION_K], *ladders[AGEING_K]})
    assert list(features.temperatures_k) == temperatures
    table = equilibria.grid(axes, temperatures)  # from the cache: the features' own computation
    equilibria.close()
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(lo, hi, 200) for lo, hi in BOUNDS.values()])
    ours = features(torch.as_tensor(x)).numpy()
    assert ours.shape == (200, len(FEATURES))
    t = table.temperatures_k
    i_age = int(np.argmin(np.abs(t - AGEING_K)))
    flat = {c: np.nan_to_num(v).reshape(len(t), -1) for c, v in table.fractions.items()}
    rows = {at: [temperatures.index(k) for k in ladder] for at, ladder in ladders.items()}
    brittle = sum(flat[c] for c in BRITTLE)
    grids = [flat["gamma_prime"][i_age], brittle[i_age],
             temperature_margin((1.0 - flat["gamma"])[rows[SOLUTION_K]], ladders[SOLUTION_K], SOLUTION_K, 0.01),
             temperature_margin(brittle[rows[AGEING_K]], ladders[AGEING_K], AGEING_K, 0.01),
             temperature_margin(flat["gamma_prime"][rows[SOLUTION_K]], ladders[SOLUTION_K], SOLUTION_K, SOLVUS_FRACTION)]
    expected = np.column_stack([RegularGridInterpolator(table.axes, g.reshape(3, 3, 3))(x) for g in grids])
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    # Al raises the gamma-prime solvus: the solution margin shrinks as Al grows (Co, Cr fixed); the
    # solvus itself (the last particle dissolved) lies above the state's 1 % tolerance, so less margin
    probe = features(torch.tensor([[al, 0.05, 0.05] for al in (0.03, 0.08, 0.13)], dtype=torch.double))
    margins = probe[:, FEATURES.index("solution_margin_k")]
    assert margins[0] > margins[1] > margins[2]
    solvus = probe[:, FEATURES.index("solvus_margin_k")]
    assert solvus[0] > solvus[1] > solvus[2] and bool((solvus <= margins + 1e-9).all())


def test_features_are_differentiable_and_batch_shaped(features):
    x = torch.tensor([[0.071, 0.052, 0.093]], dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(features, (x,))
    batch = torch.rand(4, 5, 3, dtype=torch.double) * torch.tensor([0.12, 0.15, 0.15]) + torch.tensor([0.02, 0, 0])
    assert features(batch).shape == (4, 5, len(FEATURES))
    outside = features(torch.tensor([[0.5, -0.1, 0.15]], dtype=torch.double))  # clamped to the tabulated box
    np.testing.assert_allclose(outside, features(torch.tensor([[0.14, 0.0, 0.15]], dtype=torch.double)))
    with pytest.raises(ValueError, match="expected 3 columns"):
        features(torch.zeros(2, 2, dtype=torch.double))
    with pytest.raises(ValueError, match="ageing .* must be below solutionising"):
        CalphadFeatures(("Al",), "Ni", {"Al": (0.0, 0.1)}, solution_temperature_k=1000, ageing_temperature_k=1100)


def test_a_far_infeasible_verdict_moves_nothing_and_a_shifted_boundary_is_learned(features):
    """Issue 19's plateau: one infeasible alloy far beyond the boundary bent a polynomial classifier's
    whole boundary. On the CALPHAD margin it agrees with the database and moves nothing; verdicts that
    put the boundary 30 K inside the database's move it there, everywhere at once."""
    prior = CalphadFeasibility(features)
    rng = np.random.default_rng(1)
    x = torch.as_tensor(np.column_stack([rng.uniform(lo, hi, 400) for lo, hi in BOUNDS.values()]))
    margin = features.margin_k(x)
    far = x[margin < -80][:2]
    after = prior.updated(far, torch.zeros(len(far), dtype=torch.double))
    assert abs(after.boundary_shift_k) < 2.0
    safe = x[(margin > 10) & (margin < 60)][:5]
    np.testing.assert_allclose(after.log_probability(safe).exp(), prior.log_probability(safe).exp(), atol=0.02)
    # the truth needs 30 K more margin than the database says: verdicts on both sides of it
    labels = (margin > 30.0).double()
    learned = prior.updated(x, labels)
    assert learned.boundary_shift_k == pytest.approx(30.0, abs=8.0)
    p = learned.log_probability(x).exp()
    assert float(p[margin > 60].min()) > 0.9 and float(p[margin < 0].max()) < 0.15  # the width: 12.5 K


def test_an_alloy_well_beyond_the_boundary_stays_improbable(features):
    """P(feasible) has no floor set by the model's own doubt. Where the database is believed to within
    10 K, an alloy 60 K beyond its boundary, measured infeasible five times, has P < 1 %; a learned slope
    (whose uncertainty grows the logit's variance with the margin squared) under the probit
    approximation left it at 5.5 %, and on twin_1350_1100, at 390 K beyond, the planner re-proposed
    such an alloy eleven times in one run."""
    rng = np.random.default_rng(2)
    x = torch.as_tensor(np.column_stack([rng.uniform(lo, hi, 2000) for lo, hi in BOUNDS.values()]))
    margin = features.margin_k(x)
    assert float(margin.min()) < -60
    far = x[margin.argmin()].expand(5, -1)
    model = CalphadFeasibility(features, offset_sd_k=10.0, gradient_sd_k=10.0).updated(
        far, torch.zeros(5, dtype=torch.double))
    with torch.no_grad():
        assert float(model.log_probability(far[:1]).exp()) < 0.01
        assert float(model.log_probability(x[margin > 40]).exp().min()) > 0.9


def test_the_expected_logistic_is_exact_in_its_tails():
    """log E[sigmoid(z)], z ~ N(m, v), against scipy's adaptive quadrature, from the bulk to far tails."""
    from scipy.integrate import quad
    from scipy.special import log_expit

    from sdl.surrogates.phase_classifier import log_expected_logistic

    for m, v in [(0.0, 1e-12), (2.0, 1.0), (-3.0, 4.0), (-31.0, 11.0), (-60.0, 30.0), (4.0, 9.0)]:
        sd = math.sqrt(v)

        def density(z, m=m, v=v):
            return math.exp(log_expit(z) - (z - m) ** 2 / (2 * v) - 0.5 * math.log(2 * math.pi * v))

        reference = math.log(quad(density, m - 12 * sd, m + 12 * sd, points=[m + v, m], limit=200)[0]) \
            if v > 1e-6 else float(log_expit(m))
        got = float(log_expected_logistic(torch.tensor(m, dtype=torch.double), torch.tensor(v, dtype=torch.double)))
        assert got == pytest.approx(reference, abs=1e-3), (m, v)


def test_the_bo_planner_weighs_by_its_own_calphad_and_models_hardness_on_it(cache):
    """planner.bo with `feasibility: calphad` and CALPHAD objective inputs: one table from the planner's
    own database (this module's cache: no new CALPHAD call), a proposal inside the space, P(feasible)
    corrected by the verdicts, and a GP that sees the features."""
    from sdl.agents.base import AgentContext
    from sdl.agents.bo_planner import BoPlanner, BoSettings
    from sdl.agents.planner import ProposeRequest
    from sdl.experiment import Composition, DesignPoint, Observation
    from sdl.objective import ObjectiveConfig
    from sdl.space import SearchSpace

    space = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.55, 0.98], **{e: list(b) for e, b in
                                                                                             BOUNDS.items()}},
                                                        "balance": "Ni"}})
    settings = BoSettings.model_validate({
        "feasibility": "calphad", "initial_points": 4, "num_restarts": 2, "raw_samples": 64,
        "constraint": {"measurements": ["processable"], "at_least": 0.5},
        "calphad": {"solution_temperature_k": SOLUTION_K, "ageing_temperature_k": AGEING_K, "points_per_axis": 3,
                    "cache_path": str(cache), "objective_inputs": ["gamma_prime_at_ageing", "solution_margin_k"]}})
    planner = BoPlanner(settings, AgentContext(space=space, seed=0,
                                               objective=ObjectiveConfig(measurement="hardness_hv", direction="maximize")))
    assert planner.requires(settings) == frozenset()  # no phase-boundary agent needed: its own CALPHAD
    features = planner.calphad_features
    rows = [(0.05, 0.05, 0.05, 1.0), (0.10, 0.10, 0.05, 1.0), (0.08, 0.02, 0.12, 1.0), (0.14, 0.15, 0.15, 0.0),
            (0.12, 0.07, 0.07, 1.0)]
    observations = []
    for al, co, cr, ok in rows:
        point = DesignPoint(composition=Composition({"Ni": 1 - al - co - cr, "Al": al, "Co": co, "Cr": cr}))
        gp = float(features(torch.tensor([[al, co, cr]], dtype=torch.double))[0, 0])
        observations.append(Observation(point=point, status="done",
                                        measurements={"hardness_hv": 100 + 400 * gp, "processable": ok}))
    (proposal,) = planner.propose(ProposeRequest(n=1, observations=observations))
    space.check(proposal)
    model = planner._gp(planner.to_tensor([o.point for o in observations]),
                        torch.tensor([[o.measurements["hardness_hv"]] for o in observations], dtype=torch.double),
                        physics=True)
    assert model.train_inputs[0].shape[-1] == 3 + 2  # Al, Co, Cr and the two CALPHAD features
    with pytest.raises(ValueError, match="feasibility 'calphad' needs the `calphad` settings"):
        BoSettings.model_validate({"feasibility": "calphad", "constraint": {"measurements": ["p"], "at_least": 0.5}})


def test_a_designed_ageing_temperature_is_one_more_axis(features, cache):
    """Joint composition and process design: the ageing temperature is a column of the input; on a
    ladder temperature the features equal those of a campaign that fixes it there, and they are
    differentiable in it too."""
    designed = CalphadFeatures(("Al", "Co", "Cr"), "Ni", BOUNDS, solution_temperature_k=SOLUTION_K,
                               ageing_temperature_k=(1000.0, 1100.0), points_per_axis=3, cache_path=cache)
    assert designed.inputs == ("Al", "Co", "Cr", "ageing_temperature_k")
    rng = np.random.default_rng(2)
    x = torch.as_tensor(np.column_stack([rng.uniform(lo, hi, 50) for lo, hi in BOUNDS.values()]))
    at_1050 = designed(torch.cat([x, torch.full((50, 1), AGEING_K, dtype=torch.double)], dim=-1))
    np.testing.assert_allclose(at_1050, features(x), atol=1e-9)
    point = torch.tensor([[0.09, 0.05, 0.05, 1033.0]], dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(designed, (point,))
    from sdl.agents.bo_settings import CalphadPhysicsSettings

    with pytest.raises(ValueError, match="either ageing_temperature_k .* or ageing_temperature_parameter"):
        CalphadPhysicsSettings(solution_temperature_k=SOLUTION_K)


def test_a_physics_prior_mean_carries_the_gp_where_it_has_no_data():
    """feature_role 'mean': a prior mean linear in a computed feature, fitted with the GP; far from
    the data the prediction follows the physics instead of reverting to a constant, while the
    kernel sees the inputs only."""
    from sdl.surrogates.gp import LinearMeanOf, fit_single_task_gp

    def physics(X):
        return torch.sin(6.0 * X[..., :1])

    x = torch.linspace(0.0, 0.5, 12, dtype=torch.double).unsqueeze(-1)
    y = 40.0 * physics(x) + 100.0
    bounds = torch.tensor([[0.0], [1.0]], dtype=torch.double)
    feature_bounds = torch.tensor([[-1.0], [1.0]], dtype=torch.double)
    hybrid = fit_single_task_gp(x, y, bounds=bounds, features=physics, feature_bounds=feature_bounds,
                                feature_role="mean")
    plain = fit_single_task_gp(x, y, bounds=bounds)
    assert isinstance(hybrid.mean_module, LinearMeanOf)
    assert list(hybrid.covar_module.active_dims) == [0]
    far = torch.tensor([[0.9]], dtype=torch.double)
    truth = float(40.0 * physics(far) + 100.0)  # sin(5.4) < 0: well below anything seen
    with torch.no_grad():
        assert abs(float(hybrid.posterior(far).mean) - truth) < 5.0
        assert abs(float(plain.posterior(far).mean) - truth) > 20.0


def test_a_prior_mean_feature_the_data_do_not_inform_has_no_effect():
    """The linear prior mean's weights start at zero: a feature that is zero at every measured point
    (incomplete solutionising before any alloy beyond the solvus was made) keeps weight zero, so the
    prediction beyond it is the one without that feature, not a random offset (gpytorch's default)."""
    from sdl.surrogates.gp import fit_single_task_gp

    def physics(X):
        return torch.sin(6.0 * X[..., :1])

    def with_step(X):  # the second feature switches on only beyond x = 0.7, where nothing was measured
        return torch.cat([physics(X), (X[..., :1] > 0.7).to(X)], dim=-1)

    x = torch.linspace(0.0, 0.5, 12, dtype=torch.double).unsqueeze(-1)
    y = 40.0 * physics(x) + 100.0
    bounds = torch.tensor([[0.0], [1.0]], dtype=torch.double)
    one = fit_single_task_gp(x, y, bounds=bounds, features=physics, feature_bounds=torch.tensor(
        [[-1.0], [1.0]], dtype=torch.double), feature_role="mean")
    two = fit_single_task_gp(x, y, bounds=bounds, features=with_step, feature_bounds=torch.tensor(
        [[-1.0, 0.0], [1.0, 1.0]], dtype=torch.double), feature_role="mean")
    assert two.mean_module.linear.weights[1].item() == 0.0
    far = torch.tensor([[0.9]], dtype=torch.double)
    with torch.no_grad():
        assert float(two.posterior(far).mean) == pytest.approx(float(one.posterior(far).mean), abs=0.5)


def test_incomplete_solutionising_follows_the_planners_gamma_prime_solvus(features):
    """0 where the planner's CALPHAD dissolves every gamma-prime particle at the solution temperature, 1
    where some survive, smoothed over SOLVUS_WIDTH_K around its solvus; more Al, a higher solvus."""
    from sdl.surrogates.strength_prior import SOLVUS_WIDTH_K, incomplete_solutionising

    x = torch.tensor([[al, 0.05, 0.05] for al in np.linspace(0.02, 0.14, 13)], dtype=torch.double)
    margin = features(x)[:, FEATURES.index("solvus_margin_k")]
    share = incomplete_solutionising(features, x)
    torch.testing.assert_close(share, torch.sigmoid(-margin / SOLVUS_WIDTH_K))
    assert float(share[0]) < 1e-3 and bool((share.diff() >= 0).all())


def test_a_verdict_that_contradicts_a_steep_prior_moves_it_to_the_true_mode():
    """The Laplace update finds the posterior's mode (as scipy does) even when one verdict contradicts
    a steep prior: an alloy the database called safe by 68 K fails. Undamped Newton overshot there and
    flipped the slope's sign (issue 19)."""
    from scipy.optimize import minimize

    from sdl.surrogates.phase_classifier import laplace_logistic_update

    prior_mean = torch.tensor([0.0, 2.0], dtype=torch.double)
    prior_covariance = torch.diag(torch.tensor([(2 * 40 / 25) ** 2, 1.0], dtype=torch.double))
    margins = torch.tensor([68.0, 400.0, 286.0, 106.0, 62.0], dtype=torch.double) / 25.0
    phi = torch.stack([torch.ones_like(margins), margins], dim=-1)
    labels = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.double)
    mean, covariance = laplace_logistic_update(phi, labels, prior_mean, prior_covariance)

    precision = np.linalg.inv(prior_covariance.numpy())

    def negative_log_posterior(w):
        z = phi.numpy() @ w
        d = w - prior_mean.numpy()
        return float(np.sum(np.logaddexp(0, z) - labels.numpy() * z) + 0.5 * d @ precision @ d)

    reference = minimize(negative_log_posterior, prior_mean.numpy(), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(mean.numpy(), reference, atol=1e-5)
    assert mean[1] > 0.5  # more margin is still safer
    assert torch.all(torch.linalg.eigvalsh(covariance) > 0)


def test_a_proposal_at_100_observations_makes_no_calphad_call(cache, monkeypatch):
    """The physics is tabulated once, when the planner is built; proposing (GP fit, acquisition search
    over the CALPHAD features) at 100 observations asks pycalphad for nothing."""
    from sdl.agents.base import AgentContext
    from sdl.agents.bo_planner import BoPlanner, BoSettings
    from sdl.agents.planner import ProposeRequest, RandomPlanner
    from sdl.experiment import Observation
    from sdl.objective import ObjectiveConfig
    from sdl.settings import NoSettings
    from sdl.space import SearchSpace

    space = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.55, 0.98], **{e: list(b) for e, b in
                                                                                             BOUNDS.items()}},
                                                        "balance": "Ni"}})
    settings = BoSettings.model_validate({
        "feasibility": "calphad", "num_restarts": 2, "raw_samples": 64,
        "constraint": {"measurements": ["processable"], "at_least": 0.5},
        "calphad": {"solution_temperature_k": SOLUTION_K, "ageing_temperature_k": AGEING_K, "points_per_axis": 3,
                    "cache_path": str(cache), "objective_mean": ["gamma_prime_at_ageing"]}})
    context = AgentContext(space=space, seed=0, objective=ObjectiveConfig(measurement="hardness_hv",
                                                                          direction="maximize"))
    planner = BoPlanner(settings, context)
    calls = []  # any equilibrium asked for, cached or not
    for method in ("grid", "point"):
        original = getattr(PhaseEquilibria, method)
        monkeypatch.setattr(PhaseEquilibria, method,
                            lambda self, *a, _original=original, _name=method, **k: calls.append(_name) or
                            _original(self, *a, **k))
    points = RandomPlanner(NoSettings(), context).propose(ProposeRequest(n=100))
    rng = np.random.default_rng(0)
    observations = [Observation(point=p, status="done", measurements={
        "hardness_hv": 100 + 50 * p.composition["Al"] / 0.14 + rng.normal(0, 5), "processable": float(rng.random() < 0.8)})
        for p in points]
    (proposal,) = planner.propose(ProposeRequest(n=1, observations=observations))
    space.check(proposal)
    assert calls == []


def test_a_designed_ageing_temperature_must_be_a_parameter_below_solutionising():
    from sdl.agents.base import AgentContext
    from sdl.agents.bo_planner import BoPlanner, BoSettings
    from sdl.space import SearchSpace

    composition = {"elements": {"Ni": [0.55, 0.98], **{e: list(b) for e, b in BOUNDS.items()}}, "balance": "Ni"}
    settings = BoSettings.model_validate({
        "feasibility": "calphad", "constraint": {"measurements": ["processable"], "at_least": 0.5},
        "calphad": {"solution_temperature_k": SOLUTION_K, "ageing_temperature_parameter": "ageing_temperature_k"}})
    alone = SearchSpace.model_validate({"composition": composition})
    with pytest.raises(ValueError, match="'ageing_temperature_k' is not a parameter of the space"):
        BoPlanner.check(settings, AgentContext(space=alone))
    too_hot = SearchSpace.model_validate({"composition": composition,
                                          "parameters": {"ageing_temperature_k": {"low": 1000, "high": 1350}}})
    with pytest.raises(ValueError, match="reach 1350.0 K, not below the solutionising 1300.0 K"):
        BoPlanner.check(settings, AgentContext(space=too_hot))


def test_a_tilted_feasibility_model_learns_a_database_error_that_varies_with_composition(features):
    """gradient_sd_k: the database's error may change across the space. Verdicts from a truth whose
    boundary lies 0 K off the database's at the lowest Al and 80 K off at the highest are learned by the
    tilted model (it classifies new alloys better than the single-shift model and puts a larger shift
    at high Al); a tilt pinned near zero by its prior gives the single-shift model's posterior."""
    rng = np.random.default_rng(3)

    def sample(n: int) -> torch.Tensor:
        return torch.as_tensor(np.column_stack([rng.uniform(lo, hi, n) for lo, hi in BOUNDS.values()]))

    def truth(x: torch.Tensor) -> torch.Tensor:
        al = (x[:, 0] - BOUNDS["Al"][0]) / (BOUNDS["Al"][1] - BOUNDS["Al"][0])
        return (features.margin_k(x) > 80.0 * al).double()

    def near_the_boundary(n: int) -> torch.Tensor:  # where a campaign's verdicts fall, and where they matter
        x = sample(20 * n)
        return x[(features.margin_k(x) - 40.0).abs() < 60.0][:n]

    train, test = near_the_boundary(60), near_the_boundary(400)
    single = CalphadFeasibility(features).updated(train, truth(train))
    tilted = CalphadFeasibility(features, gradient_sd_k=40.0).updated(train, truth(train))

    def accuracy(model: CalphadFeasibility) -> float:
        with torch.no_grad():
            return float(((model.log_probability(test) > np.log(0.5)).double() == truth(test)).double().mean())

    assert len(test) == 400 and 1 - accuracy(tilted) < 0.7 * (1 - accuracy(single))
    # the tilt is along Al: its weight pushes the boundary to larger margins (lower logit) where Al is high
    al, co, cr = (float(w) for w in tilted.mean[1:])
    assert al < 0 and abs(al) > 2 * max(abs(co), abs(cr))
    # a tilt held near zero by its prior leaves the single shift's posterior (the tilt generalises it)
    pinned = CalphadFeasibility(features, gradient_sd_k=1e-6).updated(train, truth(train))
    np.testing.assert_allclose(pinned.mean[:1], single.mean, atol=1e-6)
    np.testing.assert_allclose(pinned.covariance[:1, :1], single.covariance, atol=1e-6)


def test_the_peak_hardness_estimate_is_textbook_strengthening_at_the_calphad_fraction(features):
    """The planner's physics estimate of hardness: Tabor of solid-solution strengthening of the
    composition plus the strength model's peak over precipitate radius at the CALPHAD gamma-prime
    fraction; differentiable; coefficients for an element outside the space refused."""
    from sdl.env.strength import StrengthParameters, precipitation_mpa, solid_solution_mpa, vickers_hardness
    from sdl.surrogates.strength_prior import PeakHardnessEstimate, peak_precipitation_mpa

    strength = StrengthParameters()
    fractions = np.array([0.0, 0.05, 0.2, 0.4, 0.6])
    peak = peak_precipitation_mpa(fractions, strength)
    radii = np.geomspace(5e-10, 5e-7, 20_000)[:, None]
    finest = precipitation_mpa(np.broadcast_to(fractions, (len(radii), 5)), radii, strength).max(axis=0)
    assert peak[0] == 0.0 and np.all(np.diff(peak) > 0)
    np.testing.assert_allclose(peak, finest, rtol=5e-4)
    assert np.all(precipitation_mpa(fractions, np.full(5, 3e-9), strength) <= peak + 1e-9)  # under-aged: less

    estimate = PeakHardnessEstimate(features, "Ni", strength)
    x = torch.tensor([[0.05, 0.05, 0.05], [0.12, 0.02, 0.13]], dtype=torch.double)
    gamma_prime = features(x)[:, FEATURES.index("gamma_prime_at_ageing")].numpy()
    composition = {"Al": x[:, 0].numpy(), "Co": x[:, 1].numpy(), "Cr": x[:, 2].numpy()}
    expected = vickers_hardness(solid_solution_mpa(composition, strength) + peak_precipitation_mpa(gamma_prime, strength))
    np.testing.assert_allclose(estimate(x).numpy(), expected, rtol=2e-3)  # the curve is interpolated on 0.0025 steps
    assert expected[1] > expected[0] + 50  # more Al, more gamma-prime: harder by a lot
    assert torch.autograd.gradcheck(estimate, (torch.tensor([[0.09, 0.05, 0.05]], dtype=torch.double,
                                                            requires_grad=True),))
    with pytest.raises(ValueError, match=r"coefficients for \['Fe'\], which are not elements of the space"):
        PeakHardnessEstimate(features, "Ni", StrengthParameters(solid_solution_mpa={"Fe": 100.0}))


def test_a_prior_mean_on_the_physics_estimate_predicts_alloys_far_from_the_data(cache, features):
    """objective_mean [peak_hardness_hv]: the GP's mean is linear in the planner's own estimate, so with
    the data in the lean corner of the space it still predicts the rich alloys, where a plain GP
    reverts to the mean of what it has seen."""
    from sdl.agents.base import AgentContext
    from sdl.agents.bo_planner import BoPlanner, BoSettings
    from sdl.env.strength import StrengthParameters
    from sdl.objective import ObjectiveConfig
    from sdl.space import SearchSpace
    from sdl.surrogates.gp import LinearMeanOf
    from sdl.surrogates.strength_prior import PeakHardnessEstimate

    space = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.55, 0.98], **{e: list(b) for e, b in
                                                                                             BOUNDS.items()}},
                                                        "balance": "Ni"}})
    settings = BoSettings.model_validate({
        "feasibility": "calphad", "initial_points": 4, "constraint": {"measurements": ["processable"], "at_least": 0.5},
        "calphad": {"solution_temperature_k": SOLUTION_K, "ageing_temperature_k": AGEING_K, "points_per_axis": 3,
                    "cache_path": str(cache), "objective_mean": ["peak_hardness_hv"]}})
    planner = BoPlanner(settings, AgentContext(space=space, seed=0, objective=ObjectiveConfig(
        measurement="hardness_hv", direction="maximize")))
    estimate = PeakHardnessEstimate(features, "Ni")
    rng = np.random.default_rng(3)

    def alloys(n, al_range):
        free = np.column_stack([rng.uniform(*al_range, n), rng.uniform(0, 0.15, n), rng.uniform(0, 0.15, n)])
        return torch.as_tensor(np.column_stack([1 - free.sum(axis=1), free]))  # columns Ni, Al, Co, Cr

    def hardness(x):  # a "truth" 20 % below the estimate (under-aged), with 5 HV scatter
        return (0.8 * estimate(x[:, 1:]) + 60 + torch.as_tensor(rng.normal(0, 5, len(x)))).unsqueeze(-1)

    lean, rich = alloys(12, (0.02, 0.06)), alloys(50, (0.11, 0.14))
    hybrid = planner._gp(lean, hardness(lean), physics=True)
    plain = planner._gp(lean, hardness(lean))
    assert isinstance(hybrid.mean_module, LinearMeanOf)
    truth = (0.8 * estimate(rich[:, 1:]) + 60).detach()
    with torch.no_grad():
        hybrid_error = (hybrid.posterior(rich).mean.squeeze(-1) - truth).abs().median()
        plain_error = (plain.posterior(rich).mean.squeeze(-1) - truth).abs().median()
    assert hybrid_error < 15.0 and plain_error > 3 * hybrid_error
    wrong = settings.model_copy(update={"calphad": settings.calphad.model_copy(
        update={"strength": StrengthParameters(solid_solution_mpa={"Fe": 100.0})})})
    with pytest.raises(ValueError, match=r"solid-solution coefficients for \['Fe'\], which are not elements"):
        BoPlanner.check(wrong, AgentContext(space=space, seed=0))


def test_the_physics_start_is_the_hardest_alloy_the_planner_believes_processable(cache, features):
    """initial_design physics: the first experiment maximises the planner's own peak-hardness estimate inside
    the chance constraint (no Sobol' alloy it believes as processable is estimated harder), the rest of the
    initial design is the feasible Sobol' sequence, and a minimised objective is refused."""
    from sdl.agents.base import AgentContext
    from sdl.agents.bo_planner import BoPlanner, BoSettings
    from sdl.agents.planner import ProposeRequest
    from sdl.objective import ObjectiveConfig
    from sdl.space import SearchSpace
    from sdl.surrogates.strength_prior import PeakHardnessEstimate

    space = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.55, 0.98], **{e: list(b) for e, b in
                                                                                             BOUNDS.items()}},
                                                        "balance": "Ni"}})
    settings = {"feasibility": "calphad", "initial_points": 4, "initial_design": "physics", "feasibility_floor": 0.9,
                "num_restarts": 4, "raw_samples": 256, "constraint": {"measurements": ["processable"], "at_least": 0.5},
                "calphad": {"solution_temperature_k": SOLUTION_K, "ageing_temperature_k": AGEING_K,
                            "points_per_axis": 3, "cache_path": str(cache), "objective_mean": ["peak_hardness_hv"]}}
    hardness = ObjectiveConfig(measurement="hardness_hv", direction="maximize")
    planner = BoPlanner(BoSettings.model_validate(settings), AgentContext(space=space, seed=0, objective=hardness))
    first = planner.propose(ProposeRequest(n=3))
    estimate = PeakHardnessEstimate(features, "Ni")
    feasibility = planner.calphad_feasibility
    x = planner.to_tensor(first)[:, planner.free_index]
    sobol = planner.to_tensor(planner.initial.points(0, 2048))[:, planner.free_index]
    with torch.no_grad():
        believed = feasibility.log_probability(x).exp()
        safe = feasibility.log_probability(sobol).exp() >= 0.9
        best_sobol = float(estimate(sobol[safe]).max())
        guess = float(estimate(x[:1]))
    assert believed[0] >= 0.9 * math.exp(-1e-3) and bool((believed[1:] >= 0.9).all())
    assert guess >= best_sobol - 0.5, (guess, best_sobol)
    assert planner.chance_fallbacks == 0  # the optimiser's own maximiser, not a start it fell back to
    assert float(estimate(x[1:]).max()) < guess  # the others are the Sobol' sequence, not more guesses
    for seed in (1, 2):  # what a metallurgist would make first does not depend on the seed
        again = BoPlanner(BoSettings.model_validate(settings), AgentContext(space=space, seed=seed, objective=hardness))
        x_again = again.to_tensor(again.propose(ProposeRequest(n=1)))[:, planner.free_index]
        with torch.no_grad():
            assert abs(float(estimate(x_again)) - guess) < 0.5
    # The guess came out infeasible (the truth's boundary lies further in than the database's): the next alloy
    # is the guess again under the boundary that verdict moved, with more margin, not the next Sobol' point;
    # while a guess is in flight, or once one succeeded, the Sobol' sequence goes on.
    from sdl.experiment import Observation

    def made(point, processable):
        return Observation(point=point, status="done", measurements={"hardness_hv": 300.0, "processable": processable})

    failed = [made(first[0], 0.0)]
    second = planner.propose(ProposeRequest(n=1, observations=failed))[0]
    sobol_next = planner._feasible_sobol(ProposeRequest(n=1, observations=failed), 1)[0]
    assert second != sobol_next
    with torch.no_grad():
        margins = features.margin_k(planner.to_tensor([first[0], second])[:, planner.free_index])
    assert float(margins[1]) > float(margins[0]) + 1.0, margins
    assert planner.propose(ProposeRequest(n=1, pending=[second]))[0] != second  # in flight: no second copy
    succeeded = failed + [made(second, 1.0)]
    assert planner.propose(ProposeRequest(n=1, observations=succeeded))[0] == \
        planner._feasible_sobol(ProposeRequest(n=1, observations=succeeded), 2)[0]
    softness = ObjectiveConfig(measurement="hardness_hv", direction="minimize")
    with pytest.raises(ValueError, match="initial_design 'physics' starts from the hardest alloy"):
        BoPlanner(BoSettings.model_validate(settings), AgentContext(space=space, seed=0, objective=softness))
    with pytest.raises(ValueError, match="initial_design 'physics' needs the `calphad` settings"):
        BoSettings.model_validate({"initial_design": "physics"})


def test_a_second_floor_risks_failures_to_learn_the_boundary_not_its_blur(cache, features):
    """feasibility_floor_known_shift: where the database's error is still unknown, the floor on P(feasible)
    (0.75) decides how far a proposal may go towards the boundary; once verdicts have pinned the error, the
    floor on P with the error known (0.9) keeps it a blur's width inside, where the single floor of 0.75
    would go on risking one failure in four."""
    from sdl.agents.base import AgentContext
    from sdl.agents.bo_planner import BoPlanner, BoSettings
    from sdl.agents.planner import ProposeRequest
    from sdl.experiment import Observation
    from sdl.objective import ObjectiveConfig
    from sdl.space import SearchSpace
    from sdl.surrogates.strength_prior import PeakHardnessEstimate

    prior = CalphadFeasibility(features)
    rng = np.random.default_rng(4)
    x = torch.as_tensor(np.column_stack([rng.uniform(lo, hi, 400) for lo, hi in BOUNDS.values()]))
    margin = features.margin_k(x)
    with torch.no_grad():  # known error (0): the blur alone; unknown (sd 40 K): flattened towards 1/2
        np.testing.assert_allclose(prior.log_probability_known_shift(x), torch.nn.functional.logsigmoid(margin / 12.5))
        inside = margin > 20
        assert bool((prior.log_probability(x[inside]) < prior.log_probability_known_shift(x[inside])).all())

    space = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.55, 0.98], **{e: list(b) for e, b in
                                                                                             BOUNDS.items()}},
                                                        "balance": "Ni"}})
    settings = {"feasibility": "calphad", "initial_points": 4, "feasibility_floor": 0.75, "num_restarts": 4,
                "raw_samples": 256, "constraint": {"measurements": ["processable"], "at_least": 0.5},
                "calphad": {"solution_temperature_k": SOLUTION_K, "ageing_temperature_k": AGEING_K,
                            "points_per_axis": 3, "cache_path": str(cache), "objective_mean": ["peak_hardness_hv"]}}
    hardness = ObjectiveConfig(measurement="hardness_hv", direction="maximize")
    # 30 alloys made, the database right (feasible exactly where its margin is positive), hardness its estimate
    estimate = PeakHardnessEstimate(features, "Ni")
    made_x = x[:30]
    with torch.no_grad():
        values = estimate(made_x)
    columns = torch.cat([1 - made_x.sum(dim=1, keepdim=True), made_x], dim=1)  # Ni, Al, Co, Cr
    to_point = BoPlanner(BoSettings.model_validate(settings), AgentContext(space=space, seed=0)).to_point
    observations = [Observation(point=to_point(row), status="done", measurements={
        "hardness_hv": float(v), "processable": float(m > 0)}) for row, v, m in zip(columns, values, margin[:30])]
    margins = {}
    for known_floor in (0.0, 0.9):
        planner = BoPlanner(BoSettings.model_validate({**settings, "feasibility_floor_known_shift": known_floor}),
                            AgentContext(space=space, seed=0, objective=hardness))
        chosen = planner.to_tensor(planner.propose(ProposeRequest(n=1, observations=observations)))
        belief = planner._calphad_belief(observations)
        free = chosen[:, planner.free_index]
        with torch.no_grad():
            assert float(belief.log_probability(free).exp()) >= 0.75 * math.exp(-1e-3)
            known_p = float(belief.log_probability_known_shift(free).exp())
            margins[known_floor] = float(features.margin_k(free))
        if known_floor:
            assert known_p >= 0.9 * math.exp(-1e-3) and planner.chance_fallbacks == 0
        else:
            assert known_p < 0.9  # the single floor goes nearer the boundary than the blur allows
    assert margins[0.9] > margins[0.0] + 5.0, margins
    with pytest.raises(ValueError, match="feasibility_floor_known_shift needs feasibility 'calphad'"):
        BoSettings.model_validate({"feasibility": "classifier", "feasibility_floor": 0.75,
                                   "feasibility_floor_known_shift": 0.9})
