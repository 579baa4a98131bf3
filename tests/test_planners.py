import numpy as np
import pytest

from sdl.agents.base import AgentContext
from sdl.agents.planner import PlannerService, ProposeRequest, RandomPlanner, SobolPlanner, make_planner
from sdl.experiment import Observation
from sdl.settings import NoSettings
from sdl.space import SearchSpace
from sdl.wire import Request

ALLOY = SearchSpace.model_validate({
    "parameters": {"age_temperature_k": {"low": 900, "high": 1100}},
    "composition": {"elements": {"Ni": [0.6, 0.9], "Al": [0.0, 0.15], "Co": [0.0, 0.2], "Cr": [0.05, 0.2]}},
})


@pytest.mark.parametrize("kind", ["random", "sobol"])
def test_points_respect_the_simplex_and_every_bound(kind):
    planner = make_planner(kind, AgentContext(space=ALLOY, seed=7))
    points = planner.propose(ProposeRequest(n=500))
    assert len(points) == 500
    for p in points:
        ALLOY.check(p)
        assert abs(sum(p.composition.root.values()) - 1.0) <= 1e-9
    fractions = np.array([[p.composition[e] for e in ("Ni", "Al", "Co", "Cr")] for p in points])
    # The bounded simplex is covered, not a corner of it.
    assert fractions[:, 1].min() < 0.02 and fractions[:, 1].max() > 0.13
    assert fractions[:, 0].min() < 0.65 and fractions[:, 0].max() > 0.85


def test_balance_element_defaults_to_the_widest_range_and_can_be_named():
    assert ALLOY.composition.balance_element == "Ni"
    named = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.5, 1], "Al": [0, 0.5]}, "balance": "Al"}})
    assert named.composition.free_elements == ["Ni"]


def test_infeasible_bounds_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="lower bounds sum to 1.2"):
        SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.7, 1], "Al": [0.5, 0.6]}}})
    with pytest.raises(ValueError, match="unknown element"):
        SearchSpace.model_validate({"composition": {"elements": {"Ni": [0, 1], "Qq": [0, 1]}}})


@pytest.mark.parametrize("cls", [RandomPlanner, SobolPlanner])
def test_proposals_are_deterministic_by_seed_and_position(cls):
    def make(seed):
        return cls(NoSettings(), AgentContext(space=ALLOY, seed=seed))

    a = make(1).propose(ProposeRequest(n=6))
    b = make(1).propose(ProposeRequest(n=6))
    c = make(2).propose(ProposeRequest(n=6))
    assert a == b and a != c
    # Pending points move the position: asking again with 4 pending gives the sequence's next points.
    resumed = make(1).propose(ProposeRequest(n=2, pending=a[:2], observations=[
        Observation(point=p, status="done", measurements={"y": 1.0}) for p in a[2:4]]))
    fresh = make(1).propose(ProposeRequest(n=6))
    assert resumed != a[:2] and len(resumed) == 2
    if cls is SobolPlanner:
        assert resumed == fresh[4:6]


def test_sobol_is_more_uniform_than_random():
    space = SearchSpace.model_validate({"parameters": {"x1": {"low": 0, "high": 1}, "x2": {"low": 0, "high": 1}}})
    from scipy.stats import qmc

    def discrepancy(planner):
        pts = planner.propose(ProposeRequest(n=128))
        return qmc.discrepancy(np.array([[p.parameters["x1"], p.parameters["x2"]] for p in pts]))

    context = AgentContext(space=space, seed=0)
    assert discrepancy(SobolPlanner(NoSettings(), context)) < discrepancy(RandomPlanner(NoSettings(), context))


def test_planner_service_contract():
    service = PlannerService(make_planner("sobol", AgentContext(space=ALLOY)))
    reply = service.handle(Request(service="planner.sobol", method="propose", payload={"n": 3}))
    assert reply.ok and len(reply.payload["points"]) == 3 and reply.payload["planner"] == "sobol"
    bad = service.handle(Request(service="planner.sobol", method="propose", payload={"n": 0}))
    assert not bad.ok and bad.error.code == "invalid_payload" and "greater than or equal to 1" in bad.error.message
    with pytest.raises(ValueError, match="unknown agent kind 'planner.tpe'; installed: ax, baybe, bo, causal"):
        make_planner("tpe", AgentContext(space=ALLOY))
    with pytest.raises(ValueError, match="settings of planner.bo: acquisition: Input should be 'nei' or 'ei'"):
        make_planner("bo", AgentContext(space=ALLOY), {"acquisition": "ucb"})
    with pytest.raises(ValueError, match="the sobol planner needs a search space"):
        make_planner("sobol", AgentContext())
