"""Causal reasoning: identification, do(), back-door adjustment, counterfactuals, the causal planner and CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from pyro import poutine

from sdl.agents.base import AgentContext
from sdl.agents.causal_planner import history_frame
from sdl.agents.planner import PlannerService, Proposal, ProposeRequest, make_planner
from sdl.bus import BusClient, Worker
from sdl.campaign import parse_config
from sdl.cli import main
from sdl.experiment import Observation
from sdl.objective import ObjectiveConfig
from sdl.settings import ConfigError
from sdl.space import SearchSpace
from sdl.surrogates.causal import (
    CausalConfig,
    CausalGraph,
    MechanismSettings,
    NotIdentifiable,
    StructuralCausalModel,
    backdoor_effect,
    composition_change,
    frontdoor_effect,
    identified_effect,
    naive_effect,
    scm_effect,
)

LINEAR = MechanismSettings(kind="polynomial", degree=1, svi_steps=800, posterior_samples=100)
SMALL_GP = {"kind": "gp", "rff_features": 128, "gp_steps": 80, "posterior_samples": 40}


def linear_gaussian(n: int = 500, seed: int = 0) -> pd.DataFrame:
    """z -> t -> m -> y and z -> y: the effect of t on y is 1.5 x 2.0 = 3.0; z confounds t and y."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    t = 0.8 * z + 0.6 * rng.normal(size=n)
    m = 1.5 * t + 0.3 * rng.normal(size=n)
    y = 2.0 * m + 3.0 * z + 0.5 * rng.normal(size=n)
    return pd.DataFrame({"z": z, "t": t, "m": m, "y": y})


LINEAR_GRAPH = {"edges": [["z", "t"], ["z", "y"], ["t", "m"], ["m", "y"]]}


# -- identification ------------------------------------------------------------------------------


def test_back_door_sets_are_found_checked_and_refused_with_the_reason():
    graph = CausalGraph(LINEAR_GRAPH)
    assert graph.adjustment_set(["t"], "y") == ["z"]
    graph.check_adjustment_set(["t"], "y", ["z"])
    with pytest.raises(NotIdentifiable, match=r"\['m'\] lie downstream of \['t'\]"):
        graph.check_adjustment_set(["t"], "y", ["z", "m"])
    with pytest.raises(NotIdentifiable, match="the back-door path t <- z -> y stays open given nothing"):
        graph.check_adjustment_set(["t"], "y", [])
    # M-bias: conditioning on the collider c opens t <- a -> c <- b -> y; the empty set is the valid one.
    m_bias = CausalGraph({"edges": [["a", "t"], ["a", "c"], ["b", "c"], ["b", "y"], ["t", "y"]]})
    assert m_bias.adjustment_set(["t"], "y") == []
    with pytest.raises(NotIdentifiable, match="t <- a -> c <- b -> y stays open"):
        m_bias.check_adjustment_set(["t"], "y", ["c"])


def test_a_latent_confounder_of_treatment_and_outcome_is_refused_clearly():
    graph = CausalGraph({"edges": [["t", "y"]], "latent": {"u": ["t", "y"]}})
    with pytest.raises(NotIdentifiable, match="no set of recorded variables blocks .* t <- u -> y"):
        graph.adjustment_set(["t"], "y")
    with pytest.raises(NotIdentifiable, match=r"cannot adjust for \['u'\]"):
        graph.check_adjustment_set(["t"], "y", ["u"])
    # The lab's graph: the latent practice confounds composition and process; the process blocks it.
    lab = CausalGraph(yaml.safe_load(Path("configs/causal.yaml").read_text())["graph"])
    assert set(lab.adjustment_set(["x_Al"], "hardness_hv")) >= {"age_temperature_k", "age_log10_duration_s"}
    assert "gamma_prime_fraction" not in lab.adjustment_set(["x_Al"], "hardness_hv")


def test_graph_config_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="cycle"):
        CausalGraph({"edges": [["a", "b"], ["b", "a"]]})
    with pytest.raises(ValueError, match="not recorded variables of the graph"):
        CausalGraph(LINEAR_GRAPH).adjustment_set(["w"], "y")
    with pytest.raises(NotIdentifiable, match="not a descendant"):
        CausalGraph(LINEAR_GRAPH).adjustment_set(["y"], "t")
    config = yaml.safe_load(Path("configs/causal.yaml").read_text())
    with pytest.raises(ValueError, match="transforms name"):
        CausalConfig.model_validate({**config, "transforms": {"radius": "log1p"}})
    with pytest.raises(ValueError, match="balance"):
        CausalConfig.model_validate({**config, "balance": "Fe"})


# -- estimation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_scm():
    data = linear_gaussian()
    return data, StructuralCausalModel(CausalGraph(LINEAR_GRAPH), LINEAR).fit(data)


def test_linear_gaussian_effect_matches_the_closed_form(linear_scm):
    data, scm = linear_scm
    graph = scm.graph
    backdoor = backdoor_effect(data, graph, "t", "y", [0.0, 1.0], settings=LINEAR)
    simulated = scm_effect(scm, "t", "y", [0.0, 1.0])
    naive = naive_effect(data, "t", "y", [0.0, 1.0], settings=LINEAR)
    assert backdoor.adjustment == ("z",)
    assert backdoor.difference() == pytest.approx(3.0, abs=0.15)
    assert simulated.difference() == pytest.approx(3.0, abs=0.15)
    # E[y | t] carries z's effect through cov(t, z): slope 3.0 + 3.0 x 0.8 / (0.64 + 0.36) = 5.4
    assert naive.difference() == pytest.approx(5.4, abs=0.3)
    assert backdoor.std[1] < 0.2 and simulated.std[1] < 0.3


def front_door_data(n: int = 800, seed: int = 1) -> pd.DataFrame:
    """t <- u -> y with u unrecorded, t -> m -> y: the effect of t on y is 1.2 x -1.5 = -1.8."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=n)
    t = u + rng.normal(size=n)
    m = 1.2 * t + 0.5 * rng.normal(size=n)
    y = -1.5 * m + 2.0 * u + 0.3 * rng.normal(size=n)
    return pd.DataFrame({"t": t, "m": m, "y": y})


def test_front_door_effect_where_only_the_front_door_identifies_it():
    """The finding: the SCM gave -0.89 +- 0.02 here (truth -1.8); now it refuses, and the front-door
    adjustment answers within its uncertainty."""
    data = front_door_data()
    graph = CausalGraph({"edges": [["t", "m"], ["m", "y"]], "latent": {"u": ["t", "y"]}})
    with pytest.raises(NotIdentifiable, match="identified by front-door, through m: use the front-door estimate"):
        backdoor_effect(data, graph, "t", "y", [0.0, 1.0], settings=LINEAR)
    scm = StructuralCausalModel(graph, LINEAR)
    with pytest.raises(NotIdentifiable, match=r"y's mechanism, learned from \['m'\], is confounded by the latent u"):
        scm_effect(scm, "t", "y", [0.0, 1.0])
    with pytest.raises(NotIdentifiable, match="confounded by the latent u"):
        scm.check_counterfactual(["t"])
    with pytest.raises(NotIdentifiable, match=r"the directed path t -> m -> y bypasses \[\]"):
        frontdoor_effect(data, graph, "t", "y", [0.0, 1.0], mediators=[], settings=LINEAR)
    effect = identified_effect(data, graph, "t", "y", [0.0, 1.0], settings=LINEAR)
    assert effect.method == "front-door adjustment" and effect.mediators == ("m",)
    spread = float(np.hypot(*effect.std))
    assert effect.difference() == pytest.approx(-1.8, abs=max(0.15, 3 * spread))
    assert 0.01 < spread < 0.3  # honest uncertainty: neither zero nor useless
    # Where back-door adjustment applies, the front-door estimator is not the one to use.
    with pytest.raises(NotIdentifiable, match="identified by back-door"):
        frontdoor_effect(linear_gaussian(), CausalGraph(LINEAR_GRAPH), "t", "y", [0.0, 1.0], settings=LINEAR)


def test_do_replaces_one_mechanism_and_leaves_upstream_alone(linear_scm):
    data, scm = linear_scm
    rows = torch.arange(len(data))
    trace = poutine.trace(poutine.do(scm.model, data={"m": torch.tensor(7.0, dtype=torch.double)})).get_trace(rows)
    assert torch.all(trace.nodes["_RETURN"]["value"]["m"] == 7.0)  # pyro's do() on the model itself
    values = scm._run(rows, {"m": 7.0})
    assert torch.all(values["m"] == 7.0)
    # upstream of m: the recorded values (t is its mechanism plus its own recorded noise)
    assert torch.allclose(values["t"][0], torch.tensor(data["t"].to_numpy()), atol=1e-9)
    assert torch.equal(values["z"][0], torch.tensor(data["z"].to_numpy()))
    # y follows m's new value: 2 x 7 + 3 z + noise
    assert float((values["y"] - 3.0 * values["z"]).mean()) == pytest.approx(14.0, abs=0.3)
    with pytest.raises(ValueError, match="cannot intervene on"):
        scm._run(rows, {"w": 1.0})


def test_counterfactuals_are_consistent_and_follow_the_mechanisms(linear_scm):
    data, scm = linear_scm
    row = 5
    same = scm.counterfactual(row, {})
    assert float(same["y"].mean()) == pytest.approx(data["y"][row], abs=1e-9)
    unchanged = scm.counterfactual(row, {"t": float(data["t"][row])})
    assert torch.allclose(unchanged["y"], torch.tensor(data["y"][row], dtype=torch.double), atol=1e-9)
    moved = scm.counterfactual(row, {"t": float(data["t"][row]) + 1.0})
    assert float(moved["y"].mean() - data["y"][row]) == pytest.approx(3.0, abs=0.15)
    assert float(moved["z"].mean()) == pytest.approx(data["z"][row])  # causes of t untouched


def test_composition_changes_keep_the_simplex():
    row = {"x_Al": 0.10, "x_Co": 0.05, "x_Cr": 0.05}
    elements = ["Ni", "Al", "Co", "Cr"]
    assert composition_change(row, {"Al": 0.12}, elements=elements, balance="Ni") == {
        "x_Al": 0.12, "x_Co": 0.05, "x_Cr": 0.05}
    scaled = composition_change(row, {"Ni": 0.85}, elements=elements, balance="Ni")
    assert sum(scaled.values()) == pytest.approx(0.15) and scaled["x_Al"] == pytest.approx(0.075)
    with pytest.raises(ValueError, match="unknown elements"):
        composition_change(row, {"Fe": 0.1}, elements=elements, balance="Ni")
    with pytest.raises(ValueError, match="sum above 1"):
        composition_change(row, {"Al": 0.95}, elements=elements, balance="Ni")
    with pytest.raises(ValueError, match="lies in"):
        composition_change(row, {"Al": -0.1}, elements=elements, balance="Ni")


# -- on the twin's lab history: CLI and the causal planner ---------------------------------------


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    out = tmp_path_factory.mktemp("history")
    result = CliRunner().invoke(main, ["causal", "history", str(out / "lab"), "--n", "120", "--seed", "3"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(Path("configs/causal.yaml").read_text())
    config["mechanisms"] = SMALL_GP
    graph_config = out / "causal.yaml"
    graph_config.write_text(yaml.safe_dump(config))
    return out / "lab", graph_config


def test_history_ledger_holds_the_confounded_practice(history):
    lab, _ = history
    data = history_frame(lab)
    assert len(data) == 120 and {"x_Al", "age_temperature_k", "gamma_prime_radius_nm", "hardness_hv"} <= set(data)
    # The practice: Al-rich alloys were mostly stabilised hot, lean ones aged cold.
    rich = data["x_Al"] > 0.09
    assert data.loc[rich, "age_temperature_k"].mean() > data.loc[~rich, "age_temperature_k"].mean() + 50
    result = CliRunner().invoke(main, ["causal", "history", str(lab)])
    assert result.exit_code != 0 and "exists" in result.output


def test_cli_effect_and_whatif(history):
    lab, graph_config = history
    runner = CliRunner()
    result = runner.invoke(main, ["causal", "effect", str(lab), "--treatment", "Al", "--values", "0.05,0.11",
                                  "--config", str(graph_config)])
    assert result.exit_code == 0, result.output
    assert ("identified by back-door, adjusting for x_Co, x_Cr, solution_temperature_k, age_temperature_k, "
            "age_log10_duration_s") in result.output
    assert (lab / "causal" / "effect_x_Al.png").stat().st_size > 10_000
    refused = runner.invoke(main, ["causal", "effect", str(lab), "--treatment", "Al", "--adjust",
                                   "gamma_prime_fraction", "--config", str(graph_config)])
    assert refused.exit_code != 0 and "not identifiable" in refused.output and "downstream" in refused.output
    unknown = runner.invoke(main, ["causal", "effect", str(lab), "--treatment", "Fe", "--config", str(graph_config)])
    assert unknown.exit_code != 0 and "not a variable of the graph" in unknown.output

    result = runner.invoke(main, ["causal", "whatif", str(lab), "--specimen", "h00004", "--set", "Ni=0.7",
                                  "--config", str(graph_config)])
    assert result.exit_code == 0, result.output
    assert "hardness_hv" in result.output and "counterfactual" in result.output
    assert (lab / "causal" / "whatif_h00004.png").exists()
    bad = runner.invoke(main, ["causal", "whatif", str(lab), "--specimen", "e99999", "--set", "Ni=0.7",
                               "--config", str(graph_config)])
    assert bad.exit_code != 0 and "no finished specimen" in bad.output
    bad = runner.invoke(main, ["causal", "whatif", str(lab), "--specimen", "h00004", "--set", "Ni",
                               "--config", str(graph_config)])
    assert bad.exit_code != 0 and "NAME=VALUE" in bad.output


SPACE = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.55, 0.95], "Al": [0.02, 0.14],
                                                                 "Co": [0.0, 0.15], "Cr": [0.0, 0.15]},
                                                    "balance": "Ni"}})


def test_causal_planner_ranks_by_interventional_effect_over_the_bus(history, broker):
    lab, graph_config = history
    settings = {"history": str(lab), "graph_config": str(graph_config), "candidates": 64, "rows_per_candidate": 16}
    service = PlannerService(make_planner("causal", AgentContext(space=SPACE, seed=0), settings))
    worker = Worker(service, broker.frontend_address, service_name="planner.causal").start()
    try:
        with BusClient(broker.frontend_address) as client:
            proposal = Proposal.model_validate(client.request("planner.causal", "propose", ProposeRequest(n=3),
                                                              timeout_s=60))
    finally:
        worker.stop()
    assert proposal.planner == "causal" and len(proposal.points) == 3 and len(proposal.predicted) == 3
    for p in proposal.points:
        SPACE.check(p)
    # Aluminium raises hardness (gamma-prime): the best-ranked alloys are Al-rich, ranked high to low.
    assert all(p.composition["Al"] > 0.08 for p in proposal.points)
    predicted = proposal.predicted
    means = [e["hardness_hv"] for e in predicted]
    assert means == sorted(means, reverse=True) and all(e["hardness_hv_std"] > 0 for e in predicted)
    # What was made is not proposed again.
    planner = service.planner
    made = [Observation(point=planner.propose(ProposeRequest(n=1))[0], status="done", measurements={})]
    again = planner.propose(ProposeRequest(n=1, observations=made))[0]
    assert again != made[0].point
    other = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.5, 1.0], "Al": [0.0, 0.5]}, "balance": "Ni"}})
    with pytest.raises(ValueError, match="differ from the causal graph"):
        make_planner("causal", AgentContext(space=other), settings)


def test_causal_planner_is_refused_at_config_load_where_nothing_identifies_its_scores(history, tmp_path):
    """The planner ranks alloys by the SCM's do(composition): with an unrecorded cause of both the
    alloys made and their hardness, nothing identifies that, and the campaign config says so."""
    lab, graph_config = history
    config = yaml.safe_load(graph_config.read_text())
    config["graph"]["latent"] = {"lab_practice": ["composition", "process", "property"]}
    confounded = tmp_path / "confounded.yaml"
    confounded.write_text(yaml.safe_dump(config))
    campaign = {"space": SPACE.model_dump(mode="json"), "instruments": [{"name": "a", "driver": "xrd"}],
                "planner": {"kind": "causal", "settings": {"history": str(lab), "graph_config": str(confounded)}}}
    with pytest.raises(ConfigError, match="planner.causal: the causal planner cannot rank alloys by hardness_hv: "
                                          "no set of recorded variables blocks .* lab_practice -> hardness_hv"):
        parse_config(campaign)


def test_bo_warm_start_from_the_causal_planner(history):
    lab, graph_config = history
    causal = {"history": str(lab), "graph_config": str(graph_config), "candidates": 64, "rows_per_candidate": 16}
    context = AgentContext(space=SPACE, seed=0, objective=ObjectiveConfig(measurement="hardness_hv", direction="maximize"))
    bo = make_planner("bo", context, {"initial_design": "causal", "causal": causal})
    first = bo.propose(ProposeRequest(n=2))
    assert first == bo.warm_start.propose(ProposeRequest(n=2)) and bo.predicted
    campaign = {"space": SPACE.model_dump(mode="json"), "instruments": [{"name": "a", "driver": "xrd"}]}
    with pytest.raises(ConfigError, match="planner: settings of planner.causal: history: Field required"):
        parse_config({**campaign, "planner": {"kind": "causal"}})
    config = parse_config({**campaign, "planner": {"kind": "bo", "settings": {"initial_design": "causal", "causal": causal}}})
    assert config.planner.settings.causal.history == lab.resolve()
    with pytest.raises(ValueError, match="needs the `causal` settings"):
        make_planner("bo", context, {"initial_design": "causal"})
