"""Transfer learning across alloy systems: the EMT labels, the element descriptors, the Deep Sets model's
invariances and regimes, its checkpoint, the learning-curve run and the BO planner's transfer prior."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from sdl.agents.base import AgentContext
from sdl.agents.planner import ProposeRequest, make_planner
from sdl.env.solid_solutions import label_random_alloys, random_fractions, solid_solution_properties
from sdl.experiment import Composition, DesignPoint, Observation
from sdl.objective import ObjectiveConfig
from sdl.space import SearchSpace
from sdl.surrogates.deep_sets import DeepSetsArchitecture, DeepSetsEnsemble, TrainingSettings
from sdl.surrogates.element_descriptors import DESCRIPTORS, descriptor_matrix, raw_descriptors

SMALL = DeepSetsArchitecture(embedding_size=8, hidden_size=16, hidden_layers=1, members=2)
QUICK = TrainingSettings(max_epochs=60, patience_epochs=20, batch_size=64)
SOURCE_TRAINING = TrainingSettings(max_epochs=800, patience_epochs=150, batch_size=64, learning_rate=1e-2)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def source_data(tmp_path_factory):
    """60 labelled Cu-Ni-Pd alloys (32-atom cells: cheap)."""
    import os

    old = os.environ.get("SDL_CACHE_DIR")
    os.environ["SDL_CACHE_DIR"] = str(tmp_path_factory.mktemp("labels"))
    try:
        return label_random_alloys(["Cu", "Ni", "Pd"], 60, seed=1, repeat=2)
    finally:
        os.environ.pop("SDL_CACHE_DIR") if old is None else os.environ.__setitem__("SDL_CACHE_DIR", old)


@pytest.fixture(scope="module")
def source_model(source_data):
    return DeepSetsEnsemble("mixing_energy_ev_per_atom", SMALL, seed=0).fit(
        source_data.elements, source_data.fractions, source_data.properties["mixing_energy_ev_per_atom"],
        regime="scratch", training=SOURCE_TRAINING)


# ---- labels -------------------------------------------------------------------------------------------

def test_a_pure_metal_has_no_mixing_energy_and_its_own_lattice_parameter():
    pure = solid_solution_properties({"Cu": 1.0}, seed=0, repeat=2)
    assert abs(pure["mixing_energy_ev_per_atom"]) < 1e-6
    assert pure["lattice_parameter_ang"] == pytest.approx(3.59, abs=0.03)  # EMT's Cu
    assert 100 < pure["bulk_modulus_gpa"] < 200


def test_silver_in_nickel_costs_energy_and_widens_the_lattice():
    alloy = solid_solution_properties({"Ni": 0.5, "Ag": 0.5}, seed=0, repeat=2)
    ni = solid_solution_properties({"Ni": 1.0}, seed=0, repeat=2)
    assert alloy["mixing_energy_ev_per_atom"] > 0.05  # the classic immiscible pair
    assert alloy["lattice_parameter_ang"] > ni["lattice_parameter_ang"] + 0.1


def test_an_element_emt_does_not_model_is_refused():
    with pytest.raises(ValueError, match="EMT has no parameters for Fe"):
        solid_solution_properties({"Ni": 0.5, "Fe": 0.5}, seed=0)


def test_random_fractions_stay_in_their_bounds_and_impossible_bounds_are_refused():
    x = random_fractions(["Cu", "Ni", "Pd", "Ag", "Au", "Pt"], 50, np.random.default_rng(0), low=0.05, high=0.35)
    assert np.allclose(x.sum(axis=1), 1.0) and x.min() >= 0.05 and x.max() <= 0.35
    with pytest.raises(ValueError, match="cannot sum to 1"):
        random_fractions(["Cu", "Ni"], 5, np.random.default_rng(0), low=0.6)


def test_a_labelled_set_is_cached_and_read_back(monkeypatch):
    first = label_random_alloys(["Cu", "Ni"], 4, seed=3, repeat=1)

    def no_calculation(*args, **kwargs):
        raise AssertionError("a cached set was recomputed")

    monkeypatch.setattr("sdl.env.solid_solutions.solid_solution_properties", no_calculation)
    again = label_random_alloys(["Cu", "Ni"], 4, seed=3, repeat=1)
    assert np.array_equal(first.fractions, again.fractions)
    assert np.array_equal(first.properties["mixing_energy_ev_per_atom"], again.properties["mixing_energy_ev_per_atom"])


# ---- descriptors ----------------------------------------------------------------------------------------

def test_descriptors_come_from_mendeleev_and_are_standardised():
    d = descriptor_matrix(["Cu", "Pt"])
    assert d.shape == (2, len(DESCRIPTORS)) and np.isfinite(d).all()
    assert raw_descriptors("Pt")[list(DESCRIPTORS).index("lattice_constant")] == pytest.approx(3.92)
    assert np.abs(d).max() < 5  # standardised over the d-block metals


def test_an_element_without_descriptors_or_no_element_at_all_is_refused():
    with pytest.raises(ValueError, match="mendeleev has no .* for He"):
        raw_descriptors("He")
    with pytest.raises(ValueError, match="'Xx' is not an element symbol"):
        raw_descriptors("Xx")


# ---- the model ------------------------------------------------------------------------------------------

def test_predictions_do_not_depend_on_the_order_of_the_elements(source_model):
    elements = ["Cu", "Ni", "Pd", "Pt"]
    x = np.random.default_rng(0).dirichlet(np.ones(4), size=20)
    order = [2, 0, 3, 1]
    mean, sd = source_model.predict(elements, x)
    mean_shuffled, sd_shuffled = source_model.predict([elements[i] for i in order], x[:, order])
    assert np.allclose(mean, mean_shuffled, atol=1e-6, rtol=0) and np.allclose(sd, sd_shuffled, atol=1e-6, rtol=0)


def test_a_zero_fraction_is_the_same_alloy_without_that_element(source_model):
    with_zero, _ = source_model.predict(["Cu", "Ni", "Pt"], np.array([[0.3, 0.7, 0.0]]))
    without, _ = source_model.predict(["Cu", "Ni"], np.array([[0.3, 0.7]]))
    assert with_zero[0] == pytest.approx(without[0], abs=1e-12)


def test_an_unseen_element_is_predicted_through_its_descriptors(source_model):
    mean, sd = source_model.predict(["Cu", "Ni", "Pd", "Pt"], np.array([[0.25, 0.25, 0.25, 0.25]]))
    assert np.isfinite(mean).all() and np.isfinite(sd).all() and sd[0] > 0
    with pytest.raises(ValueError, match="mendeleev has no"):
        source_model.predict(["Cu", "He"], np.array([[0.5, 0.5]]))


def test_the_source_model_fits_its_own_system(source_data, source_model):
    y = source_data.properties["mixing_energy_ev_per_atom"]
    mean, _ = source_model.predict(source_data.elements, source_data.fractions)
    assert np.abs(mean - y).mean() < 0.5 * np.abs(y - y.mean()).mean()


def _weights(model, part):
    return [p.detach().clone() for m in model.members for p in getattr(m, part).parameters()]


@pytest.mark.parametrize("regime", ["scratch", "embedding", "feature", "partial", "finetune", "embedding_finetune"])
def test_each_regime_trains_and_transfer_keeps_frozen_what_it_should(source_model, regime):
    target = ["Cu", "Ni", "Pd", "Pt"]
    x = np.random.default_rng(1).dirichlet(np.ones(4), size=12)
    y = 0.05 * x[:, 3] * (1 - x[:, 3])  # any smooth target
    source_weights = [p.detach().clone() for m in source_model.members for p in m.parameters()]
    fitted = source_model.fit(target, x, y, regime=regime, training=QUICK, seed=1)
    changed = {part: any(not torch.equal(a, b) for a, b in zip(_weights(source_model, part), _weights(fitted, part)))
               for part in ("encoder", "body", "head")}
    corrections = [{e: c.detach() for e, c in m.corrections.items()} for m in fitted.members]
    if regime.startswith("embedding"):  # Pt, the element the source never saw, gets an embedding of its own
        assert all(set(c) == {"Pt"} and c["Pt"].abs().max() > 0 for c in corrections)
    else:
        assert all(not c for c in corrections)
    if regime == "embedding":  # and every network weight is kept
        assert changed == {"encoder": False, "body": False, "head": False}
    elif regime == "feature":
        assert changed == {"encoder": False, "body": False, "head": True}
    elif regime == "partial":
        assert changed == {"encoder": False, "body": True, "head": True}
    else:
        assert all(changed.values())
    assert fitted.trained_on == (["Cu-Ni-Pd-Pt"] if regime == "scratch" else ["Cu-Ni-Pd", "Cu-Ni-Pd-Pt"])
    assert all(p.requires_grad for m in fitted.members for p in m.parameters())  # nothing left frozen by accident
    after = [p for m in source_model.members for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(source_weights, after))  # the source model is left as it was


def test_the_embedding_regime_moves_the_new_elements_alloys_and_refuses_a_system_without_one(source_model, tmp_path):
    """Learning Pt's embedding changes what the model predicts for alloys with Pt and nothing else: a Cu-Ni-Pd
    alloy (Pt at zero fraction, or Pt not named) is predicted as before. It survives a checkpoint, is
    invariant to the order of the elements, and a system without an unseen element has nothing to learn."""
    target = ["Cu", "Ni", "Pd", "Pt"]
    x = np.random.default_rng(1).dirichlet(np.ones(4), size=12)
    y = 0.05 * x[:, 3] * (1 - x[:, 3])
    fitted = source_model.fit(target, x, y, regime="embedding", training=QUICK, seed=1)
    assert fitted.trained_on == ["Cu-Ni-Pd", "Cu-Ni-Pd-Pt"] and "Pt" in fitted.seen_elements
    with_pt = np.random.default_rng(2).dirichlet(np.ones(4), size=5)
    assert not np.allclose(fitted.predict(target, with_pt)[0], source_model.predict(target, with_pt)[0])
    ternary = np.random.default_rng(3).dirichlet(np.ones(3), size=5)
    padded = np.hstack([ternary, np.zeros((5, 1))])
    assert np.allclose(fitted.predict(target, padded)[0], source_model.predict(target[:3], ternary)[0], atol=1e-12)
    order = [3, 1, 0, 2]
    assert np.allclose(fitted.predict(target, with_pt)[0], fitted.predict([target[i] for i in order],
                                                                          with_pt[:, order])[0], atol=1e-6, rtol=0)
    fitted.save(tmp_path / "adapted.pt")
    assert np.array_equal(DeepSetsEnsemble.load(tmp_path / "adapted.pt").predict(target, with_pt)[0],
                          fitted.predict(target, with_pt)[0])
    with pytest.raises(ValueError, match="regime 'embedding' learns the embeddings of elements the model never "
                                         "saw, and it was trained on every one of Cu, Ni, Pd; use feature"):
        source_model.fit(target[:3], x[:, :3] / x[:, :3].sum(axis=1, keepdims=True), y, regime="embedding")


def test_the_source_anchor_keeps_fine_tuned_weights_near_the_source_models(source_model):
    """L2-SP (training.source_anchor): fine-tuning on a few target alloys moves the weights less far from
    the source model's than without it, and training from scratch ignores it (no source to stay near)."""
    target = ["Cu", "Ni", "Pd", "Pt"]
    x = np.random.default_rng(1).dirichlet(np.ones(4), size=12)
    y = 0.05 * x[:, 3] * (1 - x[:, 3])

    def distance(model):
        return sum(float(((a - b) ** 2).sum().detach()) for m, n in zip(source_model.members, model.members)
                   for a, b in zip(m.parameters(), n.parameters()))

    free = source_model.fit(target, x, y, regime="finetune", training=QUICK, seed=1)
    held = source_model.fit(target, x, y, regime="finetune", seed=1,
                            training=QUICK.model_copy(update={"source_anchor": 10.0}))
    assert 0 < distance(held) < 0.5 * distance(free)
    scratch = [source_model.fit(target, x, y, regime="scratch", seed=1, training=t)
               for t in (QUICK, QUICK.model_copy(update={"source_anchor": 10.0}))]
    assert all(torch.equal(a, b) for a, b in zip(*(list(m.members[0].parameters()) for m in scratch)))


def test_a_gp_with_the_source_model_as_prior_mean_predicts_where_it_has_no_data(source_model):
    """The ``gp_prior`` curve: where the target property is (up to scale and offset) what the source model
    predicts plus a little, 6 target alloys suffice for the GP with that prior mean, and a GP from scratch
    on the same 6 is far off."""
    from sdl.surrogates.transfer_learning import gp_mean

    target = ["Cu", "Ni", "Pd", "Pt"]
    rng = np.random.default_rng(5)
    pool = random_fractions(target, 200, rng)
    predicted, _ = source_model.predict(target, pool)
    y = 2.0 * predicted + 0.05 + 0.002 * pool[:, 0]
    train, test = np.arange(6), np.arange(100, 200)
    errors = {name: np.abs(gp_mean(target, pool[train], y[train], pool[test], prior=prior, pool=pool) - y[test]).mean()
              for name, prior in (("gp", None), ("gp_prior", source_model))}
    assert errors["gp_prior"] < 0.2 * errors["gp"], errors


def test_fitting_refuses_mismatched_or_too_little_data(source_model):
    with pytest.raises(ValueError, match="do not match"):
        source_model.fit(["Cu", "Ni"], np.ones((3, 3)) / 3, np.zeros(3))
    with pytest.raises(ValueError, match="at least 2"):
        source_model.fit(["Cu", "Ni"], np.array([[0.5, 0.5]]), np.zeros(1))
    with pytest.raises(ValueError, match="regime 'all'"):
        source_model.fit(["Cu", "Ni"], np.array([[0.5, 0.5], [0.2, 0.8]]), np.zeros(2), regime="all")


def test_a_checkpoint_predicts_what_the_model_did(source_model, tmp_path):
    path = tmp_path / "model.pt"
    source_model.save(path)
    loaded = DeepSetsEnsemble.load(path)
    x = np.random.default_rng(2).dirichlet(np.ones(4), size=5)
    assert np.array_equal(source_model.predict(["Cu", "Ni", "Pd", "Pt"], x)[0], loaded.predict(["Cu", "Ni", "Pd", "Pt"], x)[0])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a Deep Sets checkpoint"):
        DeepSetsEnsemble.load(tmp_path / "junk.pt")


# ---- the workflow and the command line ----------------------------------------------------------------

def tiny_config(tmp_path) -> str:
    path = tmp_path / "transfer.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "out": str(tmp_path / "run"),
        "source": {"elements": ["Cu", "Ni", "Pd"], "alloys": 30, "seed": 1},
        "target": {"elements": ["Cu", "Ni", "Pd", "Pt"], "alloys": 12, "test_alloys": 10, "seed": 2},
        "architecture": SMALL.model_dump(), "training": QUICK.model_dump(),
        "evaluation": {"sizes": [4, 8], "seeds": 2}}))
    return str(path)


def test_pretrain_and_evaluate_write_a_model_and_learning_curves(tmp_path):
    from click.testing import CliRunner

    from sdl.cli import main

    config = tiny_config(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["transfer", "evaluate", config])
    assert result.exit_code != 0 and "run `sdl transfer pretrain` first" in result.output
    result = runner.invoke(main, ["transfer", "pretrain", config, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "source_model.pt").is_file()
    result = runner.invoke(main, ["transfer", "evaluate", config, "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "learning_curves.json").read_text())
    assert set(summary["mae"]) == {"scratch", "embedding", "feature", "partial", "finetune", "embedding_finetune",
                                   "gp", "gp_prior"}
    assert all(len(summary["mae"][r][n]["all"]) == 2 for r in summary["mae"] for n in ("4", "8"))
    assert all(math.isfinite(v) for r in summary["reduction_vs_scratch"].values() for v in r.values())
    assert (tmp_path / "run" / "learning_curves.png").stat().st_size > 10_000
    assert "| finetune |" in result.output


def test_a_bad_transfer_config_is_one_clear_line(tmp_path):
    from click.testing import CliRunner

    from sdl.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"source": {"elements": ["Cu", "Fe"]}}))
    result = CliRunner().invoke(main, ["transfer", "pretrain", str(bad)])
    assert result.exit_code != 0 and "EMT oracle has no parameters for Fe" in result.output
    assert "Traceback" not in result.output
    bad.write_text(yaml.safe_dump({"target": {"elements": ["Cu", "Ni", "Pd"]}}))  # nothing new for 'embedding'
    result = CliRunner().invoke(main, ["transfer", "evaluate", str(bad)])
    assert result.exit_code != 0 and "regime 'embedding' learns the target's elements that the source" in result.output
    assert "Traceback" not in result.output


# ---- the BO planner's transfer prior -------------------------------------------------------------------

TERNARY = SearchSpace.model_validate({"composition": {"elements": {"Cu": [0.0, 1.0], "Ni": [0.0, 1.0],
                                                                   "Pt": [0.0, 1.0]}, "balance": "Cu"}})


def test_the_transfer_prior_changes_what_bo_proposes(source_model, tmp_path):
    checkpoint = tmp_path / "source.pt"
    source_model.save(checkpoint)
    context = AgentContext(space=TERNARY, seed=0, objective=ObjectiveConfig(measurement="e", direction="minimize"))
    quick = {"initial_points": 3, "num_restarts": 2, "raw_samples": 64, "mc_samples": 64}
    plain = make_planner("bo", context, quick)
    informed = make_planner("bo", context, {**quick, "prior": {"kind": "transfer", "source": str(checkpoint)}})
    start = make_planner("sobol", AgentContext(space=TERNARY, seed=0)).propose(ProposeRequest(n=4))
    mean, _ = source_model.predict(["Cu", "Ni", "Pt"], np.array([[p.composition[e] for e in ("Cu", "Ni", "Pt")]
                                                                 for p in start]))
    observations = [Observation(point=p, status="done", measurements={"e": float(v)}) for p, v in zip(start, mean)]
    request = ProposeRequest(n=1, observations=observations)
    a, b = plain.propose(request)[0], informed.propose(request)[0]
    assert a != b
    TERNARY.check(b)
    # the informed GP's mean follows the source model where there are no data
    probe = np.random.default_rng(3).dirichlet(np.ones(3), size=30)
    x = torch.as_tensor(probe[:, [0, 1, 2]], dtype=torch.double)
    gp = informed._gp(informed.to_tensor([o.point for o in observations]),
                      torch.tensor([[o.measurements["e"]] for o in observations], dtype=torch.double), physics=True)
    with torch.no_grad():
        predicted = gp.posterior(x).mean.squeeze(-1).numpy()
    truth, _ = source_model.predict(["Cu", "Ni", "Pt"], probe)
    assert np.corrcoef(predicted, truth)[0, 1] > 0.9


def test_the_adapted_prior_learns_the_new_element_from_the_campaigns_results(source_model, tmp_path):
    """``prior.adapt``: before a proposal the source model is adapted to the results so far (Pt's embedding
    learned); where the truth differs from the source model by a term in Pt, the adapted prior mean is the
    closer one, and the planner's source model is left as it was."""
    checkpoint = tmp_path / "source.pt"
    source_model.save(checkpoint)
    elements = ["Cu", "Ni", "Pt"]
    objective = ObjectiveConfig(measurement="mixing_energy_ev_per_atom", direction="minimize")
    planner = make_planner("bo", AgentContext(space=TERNARY, seed=0, objective=objective), {
        "initial_points": 3, "num_restarts": 2, "raw_samples": 64, "mc_samples": 64,
        "prior": {"kind": "transfer", "source": str(checkpoint), "adapt": "embedding", "adapt_from": 4,
                  "training": {"max_epochs": 300, "patience_epochs": 60}}})

    def truth(fractions: np.ndarray) -> np.ndarray:
        return source_model.predict(elements, fractions)[0] - 0.05 * fractions[:, 2] * (1 - fractions[:, 2])

    rng = np.random.default_rng(5)
    train, probe = rng.dirichlet(np.ones(3), size=12), rng.dirichlet(np.ones(3), size=40)
    x, y = torch.as_tensor(train), -torch.as_tensor(truth(train))  # BoTorch maximises: y is -energy
    assert planner._adapted_transfer_model(x[:3], y[:3]) is planner.transfer_model  # fewer than adapt_from
    adapted = planner._adapted_transfer_model(x, y)
    errors = {name: np.abs(model.predict(elements, probe)[0] - truth(probe)).mean()
              for name, model in (("source", planner.transfer_model), ("adapted", adapted))}
    assert errors["adapted"] < 0.7 * errors["source"], errors
    assert np.allclose(planner.transfer_model.predict(elements, probe)[0], source_model.predict(elements, probe)[0])
    observations = [Observation(point=DesignPoint(parameters={}, composition=Composition(dict(zip(elements, row)))),
                                status="done", measurements={"mixing_energy_ev_per_atom": float(value)})
                    for row, value in zip(train[:5], truth(train[:5]))]
    TERNARY.check(planner.propose(ProposeRequest(n=1, observations=observations))[0])  # through the adapted prior


def test_the_prior_initial_design_starts_where_the_source_model_predicts_best(source_model, tmp_path):
    checkpoint = tmp_path / "source.pt"
    source_model.save(checkpoint)
    elements = ["Cu", "Ni", "Pt"]
    context = AgentContext(space=TERNARY, seed=3, objective=ObjectiveConfig(measurement="e", direction="minimize"))
    planner = make_planner("bo", context, {"initial_points": 3, "initial_design": "prior", "num_restarts": 2,
                                           "raw_samples": 64, "prior": {"kind": "transfer", "source": str(checkpoint)}})
    first = planner.propose(ProposeRequest(n=1))[0]
    TERNARY.check(first)
    predicted_first = source_model.predict(elements, np.array([[first.composition[e] for e in elements]]))[0][0]
    random_alloys = np.random.default_rng(0).dirichlet(np.ones(3), size=500)
    assert predicted_first <= source_model.predict(elements, random_alloys)[0].min() + 1e-4
    second = planner.propose(ProposeRequest(n=1, pending=[first]))[0]  # then the Sobol' sequence
    assert second != first


def test_an_adapted_prior_or_prior_design_is_refused_where_it_cannot_work(source_model, tmp_path):
    checkpoint = tmp_path / "source.pt"
    source_model.save(checkpoint)
    context = AgentContext(space=TERNARY, seed=0, objective=ObjectiveConfig(measurement="e", direction="minimize"))
    with pytest.raises(ValueError, match="predicts 'mixing_energy_ev_per_atom' and the objective is 'e'"):
        make_planner("bo", context, {"prior": {"kind": "transfer", "source": str(checkpoint), "adapt": "embedding"}})
    with pytest.raises(ValueError, match="initial_design 'prior' .* needs `prior`"):
        make_planner("bo", context, {"initial_design": "prior"})
    seen = SearchSpace.model_validate({"composition": {"elements": {"Cu": [0, 1], "Ni": [0, 1]}, "balance": "Cu"}})
    objective = ObjectiveConfig(measurement="mixing_energy_ev_per_atom", direction="minimize")
    with pytest.raises(ValueError, match="prior.adapt, source.pt: regime .embedding. learns the embeddings of elements"):
        make_planner("bo", AgentContext(space=seen, objective=objective),
                     {"prior": {"kind": "transfer", "source": str(checkpoint), "adapt": "embedding"}})


def test_a_transfer_prior_needs_a_checkpoint_descriptors_for_every_element_and_one_objective(tmp_path, source_model):
    context = AgentContext(space=TERNARY, seed=0, objective=ObjectiveConfig(measurement="e", direction="minimize"))
    with pytest.raises(ValueError, match="no such Deep Sets checkpoint"):
        make_planner("bo", context, {"prior": {"kind": "transfer", "source": str(tmp_path / "missing.pt")}})
    checkpoint = tmp_path / "source.pt"
    source_model.save(checkpoint)
    helium = SearchSpace.model_validate({"composition": {"elements": {"Cu": [0, 1], "He": [0, 1]}, "balance": "Cu"}})
    with pytest.raises(ValueError, match="mendeleev has no .* for He"):
        make_planner("bo", AgentContext(space=helium, objective=context.objective),
                     {"prior": {"kind": "transfer", "source": str(checkpoint)}})
    with pytest.raises(ValueError, match="cannot be given with extra_objectives"):
        make_planner("bo", context, {"prior": {"kind": "transfer", "source": str(checkpoint)},
                                     "extra_objectives": [{"measurement": "cost", "direction": "minimize"}]})


# ---- the transfer surrogate agent over the bus -----------------------------------------------------------

def test_the_transfer_surrogate_adapts_and_predicts_over_the_bus(broker, source_model, tmp_path):
    from sdl.agents.capabilities import FitRequest, FitSummary
    from sdl.agents.surrogate_host import Prediction, PredictRequest
    from sdl.agents.transfer_host import TransferSurrogate, TransferSurrogateSettings
    from sdl.bus import BusClient, RemoteError, Worker

    from conftest import wait_for_service

    checkpoint = tmp_path / "source.pt"
    source_model.save(checkpoint)
    context = AgentContext(space=TERNARY, seed=0)
    settings = TransferSurrogateSettings(source=checkpoint, regime="feature", training=QUICK)
    points = make_planner("sobol", AgentContext(space=TERNARY, seed=1)).propose(ProposeRequest(n=6))
    prop = "mixing_energy_ev_per_atom"
    observations = [Observation(point=p, status="done", measurements={prop: 0.1 * p.composition["Pt"]})
                    for p in points]
    worker = Worker(TransferSurrogate(settings, context), broker.frontend_address,
                    service_name="surrogate.transfer").start()
    try:
        wait_for_service(broker, "surrogate.transfer")
        with BusClient(broker.frontend_address) as client:
            before = Prediction.model_validate(client.request("surrogate.transfer", "predict",
                                                              PredictRequest(points=points), timeout_s=60))
            expected, _ = source_model.predict(["Cu", "Ni", "Pt"], [[p.composition[e] for e in ("Cu", "Ni", "Pt")]
                                                                    for p in points])
            assert np.allclose(before.mean, expected)  # before any fit: the source model itself
            with pytest.raises(RemoteError, match="at least 2"):
                client.request("surrogate.transfer", "fit", FitRequest(observations=observations[:1], objective=prop),
                               timeout_s=60)
            with pytest.raises(RemoteError, match="predicts mixing_energy_ev_per_atom; it cannot be fitted to 'e'"):
                client.request("surrogate.transfer", "fit", FitRequest(observations=observations, objective="e"),
                               timeout_s=60)
            summary = FitSummary.model_validate(client.request(
                "surrogate.transfer", "fit", FitRequest(observations=observations, objective=prop), timeout_s=120))
            after = Prediction.model_validate(client.request("surrogate.transfer", "predict",
                                                             PredictRequest(points=points), timeout_s=60))
    finally:
        worker.stop()
    assert summary.n_train == 6 and summary.recommended in points
    truth = np.array([o.measurements[prop] for o in observations])
    assert np.abs(np.array(after.mean) - truth).mean() < np.abs(np.array(before.mean) - truth).mean()


def test_the_transfer_surrogate_is_refused_without_a_composition_space_or_a_new_element_to_learn(tmp_path,
                                                                                                  source_model):
    from sdl.agents.transfer_host import TransferSurrogate, TransferSurrogateSettings

    checkpoint = tmp_path / "source.pt"
    source_model.save(checkpoint)
    square = SearchSpace.model_validate({"parameters": {"a": {"low": 0, "high": 1}}})
    with pytest.raises(ValueError, match="works on compositions"):
        TransferSurrogate.check(TransferSurrogateSettings(source=checkpoint), AgentContext(space=square))
    embedding = TransferSurrogateSettings(source=checkpoint, regime="embedding")
    TransferSurrogate.check(embedding, AgentContext(space=TERNARY))  # Pt: new to the Cu-Ni-Pd source
    seen = SearchSpace.model_validate({"composition": {"elements": {"Cu": [0.0, 1.0], "Ni": [0.0, 1.0],
                                                                    "Pd": [0.0, 1.0]}, "balance": "Cu"}})
    with pytest.raises(ValueError, match="source.pt: regime 'embedding' learns the embeddings of elements the model "
                                         "never saw, and it was trained on every one of Cu, Ni, Pd; use feature, "
                                         "partial or finetune"):
        TransferSurrogate.check(embedding, AgentContext(space=seen))


# ---- the campaign as a bench problem -----------------------------------------------------------------

TINY_PROBLEM = {"elements": ["Cu", "Ni", "Pd", "Pt"], "low": 0.1, "high": 0.6, "repeat": 1, "reference_alloys": 30,
                "reference_search_evaluations": 72}


def test_the_transfer_campaign_runs_end_to_end_on_a_tiny_budget(source_model, tmp_path):
    """The six-component problem in miniature (Cu-Ni-Pd-Pt, 4-atom cells), BO with the transfer prior."""
    from sdl.bench import BenchPlannerSpec, ProblemSpec, make_problem, reference, run_one

    checkpoint = tmp_path / "source.pt"
    source_model.save(checkpoint)
    spec = ProblemSpec(name="quaternary_pt", budget=5, solid_solution=TINY_PROBLEM)
    problem = make_problem(spec)
    ref = reference(problem)
    assert ref["feasible_share"] == 1.0 and ref["best"] < ref["median"]  # the lowest mixing energy
    sample_only = reference(make_problem(ProblemSpec(name="quaternary_pt", budget=5, solid_solution={
        **TINY_PROBLEM, "reference_search_evaluations": 0})))
    assert ref["best"] < sample_only["best"] and ref["median"] == sample_only["median"]  # searched beyond the sample
    again = make_problem(spec)  # another bench of the same problem: the reference from disk, no EMT cell computed
    again.evaluate = lambda points: pytest.fail(f"{len(points)} EMT cells computed again for a cached reference")
    assert reference(again) == ref
    twice = make_planner("random", AgentContext(space=problem.space, seed=0)).propose(ProposeRequest(n=1)) * 2
    values, _ = problem.truth(twice)
    assert values[0] == values[1]  # the same composition is the same material
    quick = {"initial_points": 3, "num_restarts": 2, "raw_samples": 64, "mc_samples": 64}
    result = run_one(spec, BenchPlannerSpec(name="bo_transfer", kind="bo", settings={
        **quick, "prior": {"kind": "transfer", "source": str(checkpoint)}}), seed=0)
    assert result.error is None, result.error
    assert len(result.values) == 5 and all(np.isfinite(result.values))


@pytest.mark.slow  # about 40 s of BayBE fits; .ci/run runs it
def test_baybe_learns_from_the_source_system_as_a_second_task(source_data, tmp_path):
    pytest.importorskip("baybe")
    from sdl.agents.peer_planners import BayBEPlanner, BayBESettings
    from sdl.bench import BenchPlannerSpec, ProblemSpec, run_one
    from sdl.surrogates.transfer_learning import write_dataset_csv

    table = tmp_path / "source.csv"
    write_dataset_csv(source_data, table)
    spec = ProblemSpec(name="quaternary_pt", budget=3, solid_solution=TINY_PROBLEM)
    result = run_one(spec, BenchPlannerSpec(name="baybe_transfer", kind="baybe", settings={
        "source_data": str(table), "source_points": 30, "initial_points": 2}), seed=0)
    assert result.error is None, result.error
    assert len(result.values) == 3 and all(np.isfinite(result.values))
    space = SearchSpace.model_validate({"composition": {"elements": {e: [0.1, 0.6] for e in TINY_PROBLEM["elements"]},
                                                        "balance": "Cu"}})
    context = AgentContext(space=space, objective=ObjectiveConfig(measurement="mixing_energy_ev_per_atom"))
    rows = BayBEPlanner.source_table(BayBESettings(source_data=table), context)
    assert len(rows) == len(source_data) and np.allclose(rows[["Cu", "Ni", "Pd"]].sum(axis=1), 1.0)
    # what a lab's CSV can get wrong, each refused in one line when the campaign's config is checked
    other = AgentContext(space=space, objective=ObjectiveConfig(measurement="hardness_hv"))
    with pytest.raises(ValueError, match="has no column 'hardness_hv'"):
        BayBEPlanner.check(BayBESettings(source_data=table), other)
    ternary = SearchSpace.model_validate({"composition": {"elements": {"Cu": [0, 1], "Ni": [0, 1], "Pt": [0, 1]},
                                                          "balance": "Cu"}})
    with pytest.raises(ValueError, match="has alloys with Pd, which the space .* lacks"):
        BayBEPlanner.check(BayBESettings(source_data=table), context.model_copy(update={"space": ternary}))
    broken = tmp_path / "broken.csv"
    broken.write_text("Cu,Ni,mixing_energy_ev_per_atom\n0.5,0.4,0.01\n")
    with pytest.raises(ValueError, match="row 2 sum to 0.9, not 1"):
        BayBEPlanner.check(BayBESettings(source_data=broken), context)


def test_a_broken_cache_file_is_labelled_again(tmp_path):
    first = label_random_alloys(["Cu", "Ni"], 3, seed=5, repeat=1)
    (cached,) = (tmp_path / "cache" / "solid_solutions").glob("Cu-Ni_3_*.npz")
    cached.write_bytes(b"truncated")
    again = label_random_alloys(["Cu", "Ni"], 3, seed=5, repeat=1)
    assert np.array_equal(first.properties["bulk_modulus_gpa"], again.properties["bulk_modulus_gpa"])
    assert np.load(cached)["fractions"].shape == (3, 2)  # rewritten whole


def test_a_bad_solid_solution_problem_is_refused_at_load():
    from sdl.bench import ProblemSpec
    from sdl.settings import ConfigError, validate

    with pytest.raises(ConfigError, match="solid_solution: .*cannot sum to 1 over 3 elements"):
        validate(ProblemSpec, {"name": "x", "solid_solution": {"elements": ["Cu", "Ni", "Pt"], "high": 0.2}},
                 source="bench")
    with pytest.raises(ConfigError, match="give one of a formula .objective., a twin or a solid_solution"):
        validate(ProblemSpec, {"name": "x", "solid_solution": {}, "objective": "a", "parameters": {"a": {"low": 0,
                                                                                                     "high": 1}}},
                 source="bench")
