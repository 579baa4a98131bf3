"""Identification before estimation: a table of graphs (back-door, front-door, neither), checked
against the textbook answer here and against DoWhy's identification (in its own venv) in a slow test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from sdl.surrogates.dowhy_reference import dowhy_identify
from sdl.surrogates.identification import CausalGraph, NotIdentifiable, identify, simulation_check

LAB_GRAPH = yaml.safe_load(Path("configs/causal.yaml").read_text())["graph"]
LAB_COMPOSITION = ["x_Al", "x_Co", "x_Cr"]

# name: (graph, treatments, outcome, expected method, its set). Textbook graphs (Pearl, Causality,
# ch. 3; Shpitser & Pearl's hedges for the unidentified ones) and the lab's own.
TABLE = {
    "confounder": ({"edges": [["z", "t"], ["z", "y"], ["t", "y"]]}, ["t"], "y", "back-door", ["z"]),
    "confounder and mediator": ({"edges": [["z", "t"], ["z", "y"], ["t", "m"], ["m", "y"]]}, ["t"], "y",
                                "back-door", ["z"]),
    "M-bias (adjust for nothing)": ({"edges": [["a", "t"], ["a", "c"], ["b", "c"], ["b", "y"], ["t", "y"]]},
                                    ["t"], "y", "back-door", []),
    "front-door": ({"edges": [["t", "m"], ["m", "y"]], "latent": {"u": ["t", "y"]}}, ["t"], "y", "front-door", ["m"]),
    "front-door, two mediators": ({"edges": [["t", "m1"], ["m1", "y"], ["t", "m2"], ["m2", "y"]],
                                   "latent": {"u": ["t", "y"]}}, ["t"], "y", "front-door", ["m1", "m2"]),
    "front-door beside a recorded confounder": ({"edges": [["w", "t"], ["w", "y"], ["t", "m"], ["m", "y"]],
                                                 "latent": {"u": ["t", "y"]}}, ["t"], "y", "front-door", ["m"]),
    "latent confounder, no mediator": ({"edges": [["t", "y"]], "latent": {"u": ["t", "y"]}}, ["t"], "y", None, None),
    "mediator confounded with the treatment": ({"edges": [["t", "m"], ["m", "y"]],
                                                "latent": {"u": ["t", "y"], "v": ["t", "m"]}}, ["t"], "y", None, None),
    "mediator confounded with the outcome": ({"edges": [["t", "m"], ["m", "y"]],
                                              "latent": {"u": ["t", "y"], "v": ["m", "y"]}}, ["t"], "y", None, None),
    "a direct path bypasses the mediator": ({"edges": [["t", "m"], ["m", "y"], ["t", "y"]],
                                             "latent": {"u": ["t", "y"]}}, ["t"], "y", None, None),
    # An instrument identifies the effect only under extra (e.g. linear) assumptions: not ours.
    "instrument only": ({"edges": [["z", "t"], ["t", "y"]], "latent": {"u": ["t", "y"]}}, ["t"], "y", None, None),
    "the lab: composition -> hardness": (LAB_GRAPH, LAB_COMPOSITION, "hardness_hv", "back-door",
                                         ["solution_temperature_k", "age_temperature_k", "age_log10_duration_s"]),
    "the lab: ageing temperature -> hardness": (LAB_GRAPH, ["age_temperature_k"], "hardness_hv", "back-door",
                                                [*LAB_COMPOSITION, "solution_temperature_k", "age_log10_duration_s"]),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_identification_table(name):
    graph_config, treatments, outcome, method, variables = TABLE[name]
    graph = CausalGraph(graph_config)
    if method is None:
        with pytest.raises(NotIdentifiable, match="no recorded mediators meet the front-door criterion"):
            identify(graph, treatments, outcome)
        return
    found = identify(graph, treatments, outcome)
    assert found.method == method
    chosen = found.adjustment if method == "back-door" else found.mediators
    assert sorted(chosen) == sorted(variables)


def test_refusals_name_the_open_path():
    graph = CausalGraph(TABLE["mediator confounded with the outcome"][0])
    with pytest.raises(NotIdentifiable, match=r"t <- u -> y stays open.*back-door path from \['m'\] to y stays open"):
        identify(graph, ["t"], "y")
    bypass = CausalGraph(TABLE["a direct path bypasses the mediator"][0])
    with pytest.raises(NotIdentifiable, match=r"the directed path t -> y bypasses \['m'\]"):
        identify(bypass, ["t"], "y")
    assert bypass.front_door_violation(["t"], "y", ["t"]) == "['t'] cannot be mediators (latent, a treatment, or the outcome)"
    with pytest.raises(NotIdentifiable, match="not a descendant"):
        identify(CausalGraph(TABLE["confounder"][0]), ["y"], "t")
    with pytest.raises(ValueError, match="not recorded variables"):
        identify(CausalGraph(TABLE["front-door"][0]), ["u"], "y")


def test_the_scm_simulates_only_what_its_mechanisms_identify():
    # Front-door: identified, but y's mechanism learned from m alone carries u's confounding.
    front = CausalGraph(TABLE["front-door"][0])
    with pytest.raises(NotIdentifiable, match=r"y's mechanism, learned from \['m'\], is confounded by the latent u "
                                              r".*identified by front-door, through m"):
        simulation_check(front, ["t"], "y")
    # The lab: the latent practice drives only root variables, so every mechanism is unconfounded.
    lab = CausalGraph(LAB_GRAPH)
    assert simulation_check(lab, LAB_COMPOSITION, "hardness_hv").method == "back-door"
    assert simulation_check(lab, [*LAB_COMPOSITION, "age_temperature_k"], "hardness_hv").method == "back-door"


@pytest.mark.slow
def test_dowhy_agrees_on_every_graph_of_the_table(tmp_path_factory):
    """DoWhy 0.14's own identification on the same graphs: the same verdict on each (back-door, else
    front-door, else neither), the same front-door sets, and DoWhy's back-door sets valid by our check."""
    venv = Path(os.environ.get("SDL_DOWHY_VENV") or tmp_path_factory.getbasetemp() / "dowhy-venv")
    cases = [(CausalGraph(g), t, y) for g, t, y, _, _ in TABLE.values()]
    answers = dowhy_identify(cases, venv)
    for (name, (_, treatments, outcome, method, variables)), (graph, _, _), dowhy in zip(TABLE.items(), cases, answers):
        # Front-door sets are compared on every graph, also where back-door adjustment comes first.
        assert sorted(graph.front_door_set(treatments, outcome) or []) == dowhy["frontdoor"], name
        if dowhy["backdoor"] is not None:
            assert method == "back-door", f"{name}: DoWhy finds the back-door set {dowhy['backdoor']}, we say {method}"
            graph.check_adjustment_set(treatments, outcome, dowhy["backdoor"])  # DoWhy's set passes our check
        elif dowhy["frontdoor"]:
            assert method == "front-door", f"{name}: DoWhy finds the front-door set {dowhy['frontdoor']}, we say {method}"
            assert graph.front_door_violation(treatments, outcome, dowhy["frontdoor"]) is None
            assert sorted(dowhy["frontdoor"]) == sorted(variables)
        else:
            assert method is None, f"{name}: DoWhy identifies it by neither back-door nor front-door, we say {method}"
    # The one graph DoWhy identifies otherwise: by an instrument (which needs a parametric model).
    assert answers[list(TABLE).index("instrument only")]["instruments"] == ["z"]
