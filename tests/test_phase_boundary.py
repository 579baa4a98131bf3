"""Phase-boundary active learning: the CALPHAD oracle labels known alloys right, the learner finds a
known boundary with few labels, and the agent hands a usable feasibility model to planners."""

import numpy as np
import pytest

from sdl.agents.base import AgentContext
from sdl.agents.capabilities import FeasibilityRequest
from sdl.agents.phase_boundary_host import PhaseBoundaryAgent, PhaseBoundarySettings
from sdl.env.phase_state import CalphadPhaseOracle, PhaseTarget
from sdl.experiment import Composition, DesignPoint
from sdl.space import SearchSpace
from sdl.surrogates.phase_boundary import PhaseBoundaryLearner, candidate_pool, grid_design
from sdl.surrogates.phase_classifier import FeasibilityModel, feasibility_probability

SPACE = SearchSpace.model_validate({"composition": {
    "elements": {"Ni": [0.45, 0.98], "Al": [0.02, 0.145], "Co": [0.0, 0.185], "Cr": [0.0, 0.185]}, "balance": "Ni"}})
LEAN = {"Al": 0.05, "Co": 0.05, "Cr": 0.08}  # gamma only at 1300 K, a little gamma-prime at 1050 K
RICH = {"Al": 0.14, "Co": 0.02, "Cr": 0.18}  # gamma-prime survives 1300 K: not solutionisable


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("calphad") / "cache.sqlite")


def test_calphad_oracle_labels_known_alloys_and_counts_its_calls(cache):
    oracle = CalphadPhaseOracle(("Al", "Co", "Cr"), "Ni", PhaseTarget(), cache_path=cache)
    labels = oracle.label(np.array([[LEAN[e] for e in ("Al", "Co", "Cr")], [RICH[e] for e in ("Al", "Co", "Cr")]]))
    assert labels.tolist() == [1.0, 0.0]
    assert oracle.calls == 2
    fractions = oracle.equilibria.point(RICH, [1300.0])[1300.0]
    assert fractions["gamma_prime"] > 0.01  # the reason for the 0
    oracle.close()


def test_phase_target_checks_its_temperatures():
    with pytest.raises(ValueError, match="must be below"):
        PhaseTarget(solution_temperature_k=1000, ageing_temperature_k=1100)


def synthetic_label(x):
    """A curved boundary in the free-fraction box: feasible below Al + 4 (Cr - 0.09)^2 = 0.1."""
    return (x[:, 0] + 4 * (x[:, 2] - 0.09) ** 2 <= 0.1).astype(float)


@pytest.mark.parametrize("strategy", ["eer", "least_confidence"])
def test_active_learning_finds_a_known_boundary_and_labels_near_it(strategy):
    bounds = np.array([SPACE.composition.elements[e] for e in ("Al", "Co", "Cr")])
    pool = candidate_pool(SPACE, 1024, seed=0)
    held_out = candidate_pool(SPACE, 2000, seed=99)
    learner = PhaseBoundaryLearner(synthetic_label, pool, bounds, strategy=strategy, degree=2, initial=10, seed=0,
                                   num_steps=1500, warm_steps=300)
    classifier = learner.run(50)
    assert learner.calls == 50 and len(np.unique(learner.x, axis=0)) == 50  # no point labelled twice
    p, _ = classifier.predict(held_out)
    error = np.mean((p > 0.5) != synthetic_label(held_out).astype(bool))
    assert error < 0.07, error  # random sampling of the same 50 labels: 0.09 on this pool
    # the actively chosen points sit nearer the boundary than the space-filling start
    distance = np.abs(learner.x[:, 0] + 4 * (learner.x[:, 2] - 0.09) ** 2 - 0.1)
    assert np.median(distance[10:]) < np.median(distance[:10])


def test_grid_design_spreads_within_budget():
    bounds = np.array([SPACE.composition.elements[e] for e in ("Al", "Co", "Cr")])
    pool = candidate_pool(SPACE, 1024, seed=1)
    chosen = grid_design(pool, bounds, 30)
    assert 8 <= len(chosen) <= 30 and len(set(chosen.tolist())) == len(chosen)


def test_phase_boundary_agent_learns_from_calphad_and_feeds_the_planner(cache):
    service = PhaseBoundaryAgent(PhaseBoundarySettings(calphad_calls=16, degree=2, pool_size=256, cache_path=cache),
                                 AgentContext(space=SPACE, seed=0))
    model = service.feasibility(FeasibilityRequest())
    FeasibilityModel.model_validate(model.model_dump())  # survives the wire
    assert model.calphad_calls == 16 and model.inputs == ["Al", "Co", "Cr"]
    lean, rich = (DesignPoint(composition=Composition({**c, "Ni": 1 - sum(c.values())})) for c in (LEAN, RICH))
    p_lean, p_rich = feasibility_probability(model, [lean, rich])
    assert p_lean > 0.7 and p_rich < 0.5
    # asking again does not relabel: the posterior is kept
    again = service.feasibility(FeasibilityRequest())
    assert again.calphad_calls == 16
    more = service.feasibility(FeasibilityRequest(calphad_calls=20))
    assert more.calphad_calls == 20
