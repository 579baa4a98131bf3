"""The BoTorch planner: proposals stay on the simplex and in bounds, pending points move the batch,
the feasibility weighting keeps proposals out of a known infeasible region, the penalty and
multi-objective options work, and a seed fixes the proposals."""

import math

import numpy as np
import pytest
import torch

from sdl.agents.base import AgentContext
from sdl.agents.planner import ProposeRequest, make_planner
from sdl.experiment import DesignPoint, Observation
from sdl.objective import ObjectiveConfig
from sdl.space import SearchSpace
from sdl.surrogates.phase_classifier import (
    BayesianLogisticClassifier,
    FeasibilityModel,
    feasibility_probability,
    update_classifier,
)

ALLOY = SearchSpace.model_validate({
    "parameters": {"age_temperature_k": {"low": 950, "high": 1150}},
    "composition": {"elements": {"Ni": [0.5, 0.95], "Al": [0.02, 0.2], "Co": [0.0, 0.2], "Cr": [0.0, 0.2]},
                    "balance": "Ni"},
})
SQUARE = SearchSpace.model_validate({"parameters": {"a": {"low": 0, "high": 1}, "b": {"low": 0, "high": 1}}})


def alloy_value(p: DesignPoint) -> float:
    c = p.composition
    return 300 * c["Al"] + 100 * c["Cr"] - 400 * (c["Al"] - 0.12) ** 2 + 0.01 * (p.parameters["age_temperature_k"] - 1000)


def observe(points, f, **extra) -> list[Observation]:
    return [Observation(point=p, status="done", measurements={"y": f(p), **{k: g(p) for k, g in extra.items()}})
            for p in points]


def start(space, n, seed=0):
    return make_planner("sobol", AgentContext(space=space, seed=seed)).propose(ProposeRequest(n=n))


def bo(space, seed=0, objective=ObjectiveConfig(measurement="y", direction="maximize"), **settings):
    """The BO planner, quick settings unless overridden."""
    quick = {"initial_points": 5, "num_restarts": 3, "raw_samples": 64, "mc_samples": 64}
    return make_planner("bo", AgentContext(space=space, seed=seed, objective=objective), {**quick, **settings})


def test_proposals_lie_on_the_simplex_and_inside_every_bound():
    planner = bo(ALLOY, seed=1)
    observations = observe(start(ALLOY, 10), alloy_value)
    for round_ in range(3):
        points = planner.propose(ProposeRequest(n=3, observations=observations))
        assert len(points) == 3
        for p in points:
            ALLOY.check(p)  # raises if outside a bound or missing an element
            assert math.isclose(sum(p.composition.root.values()), 1.0, abs_tol=1e-9)
            for element, (lo, hi) in ALLOY.composition.elements.items():
                assert lo - 1e-9 <= p.composition[element] <= hi + 1e-9
        observations += observe(points, alloy_value)
    # it learned something: the last proposals beat the initial design's median
    assert np.median([alloy_value(p) for p in points]) > np.median([o.measurements["y"] for o in observations[:10]])


def test_pending_points_change_the_batch_and_a_seed_fixes_it():
    observations = observe(start(ALLOY, 10), alloy_value)
    planner = bo(ALLOY, seed=4)
    alone = planner.propose(ProposeRequest(n=1, observations=observations))[0]
    again = bo(ALLOY, seed=4).propose(ProposeRequest(n=1, observations=observations))[0]
    assert again == alone  # deterministic for a seed, even in a fresh planner (a restarted actor)
    pending = [alone, alone]
    with_pending = planner.propose(ProposeRequest(n=1, observations=observations, pending=pending))[0]
    x = ALLOY.to_unit_cube([alone, with_pending])
    assert np.linalg.norm(x[0] - x[1]) > 1e-3  # it does not ask again for what is already in flight
    batch = planner.propose(ProposeRequest(n=2, observations=observations))
    u = ALLOY.to_unit_cube(batch)
    assert np.linalg.norm(u[0] - u[1]) > 1e-3  # the second point treats the first as pending


def test_initial_design_is_sobol_until_enough_results():
    planner = bo(ALLOY, seed=2, initial_points=6)
    request = ProposeRequest(n=2, observations=observe(start(ALLOY, 3, seed=2), alloy_value))
    assert planner.propose(request) == make_planner("sobol", AgentContext(space=ALLOY, seed=2)).propose(request)


def test_a_center_start_makes_the_spaces_centre_first_then_follows_sobol():
    sobol = make_planner("sobol", AgentContext(space=ALLOY, seed=3)).propose(ProposeRequest(n=3))
    first = bo(ALLOY, seed=3, initial_design="center").propose(ProposeRequest(n=3))
    # Ni is the balance: Al 0.11, Co 0.1, Cr 0.1 leave it 0.69, inside [0.5, 0.95]
    assert first[0].composition.root == pytest.approx({"Ni": 0.69, "Al": 0.11, "Co": 0.1, "Cr": 0.1})
    assert first[0].parameters == {"age_temperature_k": 1050.0} and first[1:] == sobol[1:]
    later = ProposeRequest(n=2, observations=observe(first[:1], alloy_value))
    assert bo(ALLOY, seed=3, initial_design="center").propose(later) == sobol[1:]


def _feasibility_model(classifier: BayesianLogisticClassifier, inputs) -> FeasibilityModel:
    return FeasibilityModel.from_classifier(classifier, inputs=inputs, calphad_calls=0, target={})


def test_classifier_feasibility_keeps_proposals_out_of_a_known_infeasible_region():
    # The objective rises toward a + b = 2, but everything with a > 0.6 is infeasible (a known,
    # sharp boundary the classifier learns from 300 labelled points).
    rng = np.random.default_rng(0)
    x = rng.random((300, 2))
    classifier = BayesianLogisticClassifier(degree=1, num_steps=1500).fit(x, (x[:, 0] <= 0.6).astype(float))
    model = _feasibility_model(classifier, ["a", "b"])
    p = feasibility_probability(model, [DesignPoint(parameters={"a": 0.2, "b": 0.5}),
                                        DesignPoint(parameters={"a": 0.95, "b": 0.5})])
    assert p[0] > 0.9 and p[1] < 0.1

    def f(point):
        return point.parameters["a"] + point.parameters["b"]

    observations = observe(start(SQUARE, 6), f)
    constrained = bo(SQUARE, seed=0, feasibility="classifier")
    plain = bo(SQUARE, seed=0)
    chosen = {"constrained": [], "plain": []}
    for name, planner in (("constrained", constrained), ("plain", plain)):
        history = list(observations)
        for _ in range(6):
            point = planner.propose(ProposeRequest(n=1, observations=history, feasibility=model))[0]
            chosen[name].append(point.parameters["a"])
            history += observe([point], f)
    # within the classifier's own transition width (P(a = 0.7) ~ 0.1) of the boundary, never deep inside
    assert max(chosen["constrained"]) <= 0.72, chosen
    assert np.mean(chosen["constrained"]) > 0.45  # it still pushes toward the better, feasible edge
    assert max(chosen["plain"]) > 0.8, chosen  # without the classifier the planner walks into the region


def test_a_chance_constraint_keeps_every_proposal_where_feasibility_is_believed_likely():
    """feasibility_floor: the acquisition is maximised only where P(feasible) >= the floor, and where no
    point is believed that safe, the planner proposes the most probably feasible one it found."""
    rng = np.random.default_rng(0)
    x = rng.random((300, 2))
    classifier = BayesianLogisticClassifier(degree=1, num_steps=1500).fit(x, (x[:, 0] <= 0.6).astype(float))
    model = _feasibility_model(classifier, ["a", "b"])

    def f(point):
        return point.parameters["a"] + point.parameters["b"]

    history = observe(start(SQUARE, 6), f)
    planner = bo(SQUARE, seed=0, feasibility="classifier", feasibility_floor=0.9)
    believed = []
    for _ in range(5):
        point = planner.propose(ProposeRequest(n=1, observations=history, feasibility=model))[0]
        believed.append(float(feasibility_probability(model, [point])[0]))
        history += observe([point], f)
    assert min(believed) >= 0.9 * math.exp(-1e-3) - 1e-9, believed  # the constraint's tolerance: 0.1 % of P
    assert max(believed) < 0.99, believed  # at the edge of the constraint, not timidly inside it
    assert planner.chance_fallbacks == 0  # each was the optimiser's own answer, not a fallback
    # a classifier that believes nothing feasible: the most probably feasible start, not an error
    hopeless = BayesianLogisticClassifier(degree=1, num_steps=1500).fit(x, (x[:, 0] <= -0.5).astype(float))
    bleak = _feasibility_model(hopeless, ["a", "b"])
    point = planner.propose(ProposeRequest(n=1, observations=history, feasibility=bleak))[0]
    assert point.parameters["a"] < 0.1 and planner.chance_fallbacks == 1
    with pytest.raises(ValueError, match="feasibility_floor needs a P\\(feasible\\)"):
        bo(SQUARE, feasibility_floor=0.9)


def test_measured_constraint_and_penalty_steer_away_from_the_infeasible_corner():
    def f(point):
        return point.parameters["a"] + point.parameters["b"]

    def slack(point):  # feasible inside the disc a^2 + b^2 <= 0.8
        return 0.8 - point.parameters["a"] ** 2 - point.parameters["b"] ** 2

    constraint = {"measurements": ["c"], "at_least": 0.0}
    for extra in ({"feasibility": "measured"}, {"feasibility": "measured", "feasibility_acquisition": "joint"},
                  {"feasibility": "measured", "constraint_scale": "bilog"}, {"constraint_handling": "penalty"}):
        planner = bo(SQUARE, seed=3, constraint=constraint, **extra)
        history = observe(start(SQUARE, 8, seed=3), f, c=slack)
        proposed = []
        for _ in range(8):
            point = planner.propose(ProposeRequest(n=1, observations=history))[0]
            proposed.append(point)
            history += observe([point], f, c=slack)
        feasible = [slack(p) >= -0.05 for p in proposed[-4:]]
        assert sum(feasible) >= 3, (extra, [p.parameters for p in proposed])
        assert max(f(p) for p, ok in zip(proposed, [slack(p) >= 0 for p in proposed]) if ok) > 1.1


@pytest.mark.slow  # about 40 s; .ci/run runs it
def test_multi_objective_proposals_spread_along_the_trade_off():
    def hardness(point):
        return point.composition["Al"] * 1000 + 200 * point.composition["Co"]

    def cost(point):
        return 16 * point.composition["Ni"] + 33 * point.composition["Co"] + 2.6 * point.composition["Al"]

    space = SearchSpace(composition=ALLOY.composition)
    planner = bo(space, seed=0, extra_objectives=[{"measurement": "cost", "direction": "minimize"}],
                 initial_points=6, num_restarts=2, raw_samples=64, mc_samples=32)
    history = observe(start(space, 8), hardness, cost=cost)
    points = planner.propose(ProposeRequest(n=2, observations=history))
    for p in points:
        space.check(p)
    u = space.to_unit_cube(points)
    assert np.linalg.norm(u[0] - u[1]) > 1e-3  # two different trade-offs, not one point twice
    # Al raises hardness and lowers cost: both objectives agree on it, so both points take a lot of it.
    assert all(p.composition["Al"] > 0.15 for p in points), [p.composition.root for p in points]


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="needs a constraint"):
        bo(SQUARE, feasibility="measured")
    with pytest.raises(ValueError, match="penalty"):
        bo(SQUARE, constraint_handling="penalty")
    with pytest.raises(ValueError, match="joint.*needs feasibility 'measured'"):
        bo(SQUARE, feasibility="classifier", feasibility_acquisition="joint")
    with pytest.raises(ValueError, match="bilog.*not both"):
        bo(SQUARE, constraint={"measurements": ["c"], "at_least": 0.0, "at_most": 1.0}, feasibility="measured",
           constraint_scale="bilog")
    with pytest.raises(ValueError, match="feasibility_exponent at 1"):
        bo(SQUARE, constraint={"measurements": ["c"], "at_least": 0.0}, feasibility="measured",
           feasibility_acquisition="joint", feasibility_exponent=2)
    planner = bo(SQUARE, feasibility="classifier")
    with pytest.raises(ValueError, match="carries none"):
        planner.propose(ProposeRequest(n=1, observations=observe(start(SQUARE, 6), lambda p: 1.0)))


def test_measured_verdicts_update_the_classifier_where_experiments_were_made():
    rng = np.random.default_rng(1)
    x = rng.random((48, 2))  # as many CALPHAD labels as the demo's classifier gets
    classifier = BayesianLogisticClassifier(degree=1, num_steps=1000).fit(x, (x[:, 0] <= 0.6).astype(float))
    model = _feasibility_model(classifier, ["a", "b"])
    # The lab finds the true boundary lower (a <= 0.45): specimens at a = 0.5 fail.
    at = [DesignPoint(parameters={"a": 0.5, "b": b}) for b in np.linspace(0.1, 0.9, 6)]
    before = feasibility_probability(model, at)
    import torch

    x_lab = torch.tensor([[0.5, b] for b in np.linspace(0.1, 0.9, 6)], dtype=torch.double)
    updated = update_classifier(model, ["a", "b"], x_lab, torch.zeros(6, dtype=torch.double))
    after = feasibility_probability(updated, at)
    assert before.mean() > 0.6 and after.mean() < before.mean() - 0.15, (before, after)
    far = [DesignPoint(parameters={"a": 0.1, "b": 0.5})]
    assert feasibility_probability(updated, far)[0] > 0.9  # the evidence is local: deep inside stays feasible
    FeasibilityModel.model_validate(updated.model_dump())


def test_the_initial_design_skips_alloys_the_classifier_rules_out():
    rng = np.random.default_rng(2)
    x = rng.random((300, 2))
    classifier = BayesianLogisticClassifier(degree=1, num_steps=1000).fit(x, (x[:, 0] <= 0.5).astype(float))
    model = _feasibility_model(classifier, ["a", "b"])
    planner = bo(SQUARE, seed=0, feasibility="classifier", initial_points=6)
    first = planner.propose(ProposeRequest(n=4, feasibility=model))
    rest = planner.propose(ProposeRequest(n=2, pending=first, feasibility=model))
    assert all(p.parameters["a"] <= 0.55 for p in first + rest)
    assert len({(p.parameters["a"], p.parameters["b"]) for p in first + rest}) == 6  # the sequence moves on


def test_a_candidate_just_past_a_bound_comes_back_inside_the_space():
    """SLSQP meets the simplex equality to ~1e-8: free elements on their upper bounds left the
    balance element 7.6e-9 under its lower bound in a campaign (refused as outside the space)."""
    space = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.6, 0.9], "Al": [0.02, 0.135],
                                                                     "Co": [0.06, 0.14], "Cr": [0.06, 0.14]},
                                                        "balance": "Ni"}})
    planner = bo(space, objective=ObjectiveConfig(measurement="hardness_hv"))
    point = planner.to_point(torch.tensor([0.5999999924007068, 0.135, 0.14, 0.1250000076], dtype=torch.double))
    space.check(point)
    assert sum(point.composition.root.values()) == pytest.approx(1.0, abs=1e-12)


# The same alloy space, but Ni's bounds cannot bind: whatever Al, Co and Cr are, Ni = 1 - their sum lies in [0.4, 0.98].
ALLOY_BOX = SearchSpace.model_validate({
    "parameters": {"age_temperature_k": {"low": 950, "high": 1150}},
    "composition": {"elements": {"Ni": [0.4, 0.98], "Al": [0.02, 0.2], "Co": [0.0, 0.2], "Cr": [0.0, 0.2]},
                    "balance": "Ni"},
})


class _Closeness(torch.nn.Module):
    """A known acquisition: minus the squared distance (in units of each column's range) to a target row."""

    def __init__(self, target, bounds):
        super().__init__()
        self.target, self.span = torch.tensor(target, dtype=torch.double), bounds[1] - bounds[0]
        self.model = None

    def forward(self, X):
        return -(((X - self.target) / self.span) ** 2).sum(dim=-1).sum(dim=-1)


def test_where_the_balance_element_cannot_bind_the_search_runs_in_a_box_and_finds_the_same_optimum():
    assert bo(ALLOY).box is None  # Ni >= 0.5 can bind (Al + Co + Cr may reach 0.6): the equality-constrained search
    planner = bo(ALLOY_BOX, num_restarts=4, raw_samples=256)
    assert planner.box is not None
    for target in ([1000.0, 0.7, 0.1, 0.1, 0.1],  # inside: the maximiser is the target
                   [1100.0, 0.5, 0.3, 0.15, 0.05]):  # Al beyond its bound: the maximiser sits on Al = 0.2
        found = {}
        for search in ("box", "simplex"):
            planner.box = planner._box_after_balance() if search == "box" else None
            found[search] = planner._optimize(_Closeness(target, planner.bounds), sobol_seed=0)[0]
            point = planner.to_point(found[search])
            ALLOY_BOX.check(point)
            assert math.isclose(sum(point.composition.root.values()), 1.0, abs_tol=1e-12)
        span = planner.bounds[1] - planner.bounds[0]  # both stop where the value changes by < ~1e-6 of itself
        assert torch.allclose(found["box"] / span, found["simplex"] / span, atol=2e-3), found
    assert found["box"][2] == pytest.approx(0.2, abs=1e-6)
    # and whole proposals from the box search stay on the simplex and in bounds
    observations = observe(start(ALLOY_BOX, 10), alloy_value)
    for p in planner.propose(ProposeRequest(n=3, observations=observations)):
        ALLOY_BOX.check(p)
        assert math.isclose(sum(p.composition.root.values()), 1.0, abs_tol=1e-12)


def test_noisy_ei_keeps_only_the_incumbents_most_likely_to_be_the_best():
    planner = bo(SQUARE, baseline_limit=4)
    points = start(SQUARE, 60)
    observations = observe(points, lambda p: -(p.parameters["a"] - 0.3) ** 2 - (p.parameters["b"] - 0.6) ** 2)
    done, y = planner._training_data(observations)
    x = planner.to_tensor([o.point for o in done])
    model = planner._gp(x, y)
    torch.manual_seed(0)
    acquisition = planner._acquisition(model, x, y, None, torch.ones(len(x), dtype=torch.bool), seed=0)
    assert 1 <= len(acquisition.X_baseline) <= 4
    with torch.no_grad():
        best = x[int(model.posterior(x).mean.argmax())]
    assert (acquisition.X_baseline == best).all(dim=-1).any()  # the likeliest best is among them
    assert planner.propose(ProposeRequest(n=1, observations=observations))  # and the search runs on them


def test_past_the_hyperparameter_subset_the_search_uses_the_restarts_at_scale(monkeypatch):
    import sdl.agents.bo_planner as bo_module

    used = []
    search = bo_module.optimize_acqf

    def counting(*args, **kwargs):
        used.append(kwargs["num_restarts"])
        return search(*args, **kwargs)

    monkeypatch.setattr(bo_module, "optimize_acqf", counting)
    planner = bo(SQUARE, num_restarts=3, num_restarts_at_scale=1, hyperparameter_subset=16)
    for n in (12, 20):  # below and past the subset
        observations = observe(start(SQUARE, n), lambda p: p.parameters["a"] * p.parameters["b"])
        assert planner.propose(ProposeRequest(n=1, observations=observations))
    assert used == [3, 1]
