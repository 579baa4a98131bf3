"""Generative surrogates: constraints hold by construction, conditioning works, the agent answers over the bus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sdl.agents.base import AgentContext
from sdl.agents.generative_host import (
    GeneratedCompositions,
    GenerateRequest,
    GenerativeAgent,
    GenerativeSettings,
    MicrostructureFields,
    MicrostructureRequest,
)
from sdl.agents.planner import ProposeRequest, make_planner
from sdl.bus import BusClient, RemoteError, Worker
from sdl.cli import main
from sdl.env.calphad import default_cache_path
from sdl.env.heat_treatment import textbook_route
from sdl.env.twin import AlloyTwin
from sdl.experiment import DesignPoint, Observation
from sdl.objective import ObjectiveConfig
from sdl.space import SearchSpace
from sdl.surrogates.generative import (
    MicrostructureVAE,
    load_composition_cvae,
    train_composition_cvae,
    train_microstructure_vae,
    twin_composition_data,
    two_phase_fields,
)

from conftest import wait_for_service

SPACE = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.45, 0.98], "Al": [0.02, 0.145],
                                                                 "Co": [0.0, 0.185], "Cr": [0.0, 0.185]},
                                                    "balance": "Ni"}})
LOW = [0.45, 0.02, 0.0, 0.0]
HIGH = [0.98, 0.145, 0.185, 0.185]


@pytest.fixture(scope="module")
def twin():
    t = AlloyTwin(cache_path=default_cache_path())
    yield t
    t.close()


@pytest.fixture(scope="module")
def cvae(twin):
    data = twin_composition_data(twin, SPACE, 1024, seed=0)
    return data, train_composition_cvae(data, LOW, HIGH, epochs=120, seed=0)


def test_generated_alloys_obey_bounds_and_sum_even_untrained():
    from sdl.surrogates.generative import CompositionCVAE

    model = CompositionCVAE(LOW, HIGH, condition_dim=2)
    x = model.sample(torch.tensor([[250.0, 1.0]]).expand(5000, -1))
    assert torch.all(x >= torch.tensor(LOW)) and torch.all(x <= torch.tensor(HIGH))  # the float32 bounds, exactly
    assert (x.double().sum(-1) - 1).abs().max() <= 1e-6


def test_conditioning_on_hardness_hits_the_band_more_often_than_the_prior(cvae, twin):
    data, model = cvae
    target = float(np.quantile(data.conditions[:, 0], 0.9))  # a hard alloy: 10 % of the prior reach it
    band = (target - 20, target + 20)
    x = model.sample(torch.tensor([[target, 1.0]]).expand(300, -1), torch.Generator().manual_seed(3)).double().numpy()
    hardness = twin.properties([dict(zip(data.elements, row)) for row in x], textbook_route(),
                               phase_state="table").hardness_hv
    generated = np.mean((hardness > band[0]) & (hardness < band[1]))
    prior = np.mean((data.conditions[:, 0] > band[0]) & (data.conditions[:, 0] < band[1]))
    assert generated > 2 * prior, (generated, prior)
    soft = model.sample(torch.tensor([[100.0, 1.0]]).expand(300, -1)).double().numpy()
    assert soft[:, 1].mean() < x[:, 1].mean()  # less aluminium, less gamma-prime, softer


def test_microstructure_fraction_is_exact_and_training_lowers_the_loss():
    fields, fractions = two_phase_fields(48, size=32, seed=1)
    assert np.all(np.isin(fields, [0.0, 1.0])) and np.allclose(fields.reshape(48, -1).mean(1), fractions)
    losses = []
    model = train_microstructure_vae(fields, fractions, epochs=10, batch_size=8, channels=8, latent_channels=2,
                                     learning_rate=1e-2, progress=lambda epoch, loss: losses.append(loss))
    # from the uniform field's cross-entropy (1024 px x H(f), ~600) towards the textures
    assert losses[-1] < 0.6 * losses[0]
    wanted = torch.tensor([0.07, 0.33, 0.61])
    out = model.sample(wanted, torch.Generator().manual_seed(0))
    assert out.shape == (3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert (out.double().mean((1, 2)) - wanted.double()).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="multiple of 8"):
        MicrostructureVAE(size=36)


def test_generative_agent_over_the_bus(broker):
    """The agent's methods over real sockets (a campaign hosts it as a Ray actor: test_agents_campaign)."""
    settings = GenerativeSettings(twin_samples=256, epochs=30, field_size=32, field_samples=32, field_epochs=1)
    worker = Worker(GenerativeAgent(settings, AgentContext(space=SPACE)), broker.frontend_address,
                    service_name="surrogate.generative").start()
    try:
        wait_for_service(broker, "surrogate.generative")
        with BusClient(broker.frontend_address) as client:
            reply = GeneratedCompositions.model_validate(client.request(
                "surrogate.generative", "generate", GenerateRequest(target={"hardness_hv": 250, "feasible": 1}, n=20),
                timeout_s=60))
            assert len(reply.points) == 20
            for p in reply.points:
                SPACE.check(p)
            with pytest.raises(RemoteError, match="missing"):
                client.request("surrogate.generative", "generate", GenerateRequest(target={"hardness_hv": 250}),
                               timeout_s=30)
            fields = MicrostructureFields.model_validate(client.request(
                "surrogate.generative", "microstructure",
                MicrostructureRequest(composition={"Ni": 0.76, "Al": 0.12, "Co": 0.06, "Cr": 0.06},
                                      temperature_k=1050, n=2), timeout_s=120))
            assert 0.05 < fields.fraction < 0.9  # gamma-prime at 1050 K, from the twin's CALPHAD
            assert np.abs(np.asarray(fields.fields).mean((1, 2)) - fields.fraction).max() <= 1e-6
    finally:
        worker.stop()
    with pytest.raises(ValueError, match="either fraction or composition"):
        MicrostructureRequest(n=1)


def test_sdl_generate(tmp_path):
    result = CliRunner().invoke(main, ["generate", str(tmp_path), "--target", "hardness_hv=260", "--n", "50",
                                       "--twin-samples", "256", "--epochs", "30"])
    assert result.exit_code == 0, result.output
    assert "all inside the element bounds: True" in result.output
    lines = (tmp_path / "generated" / "compositions.csv").read_text().splitlines()
    assert lines[0] == "Ni,Al,Co,Cr,twin_hardness_hv" and len(lines) == 51
    assert (tmp_path / "generated" / "generated.png").stat().st_size > 10_000
    model, elements = load_composition_cvae(tmp_path / "generated" / "cvae.pt")  # the saved model comes back whole
    first = [float(v) for v in lines[1].split(",")[:4]]
    again = model.sample(torch.tensor([[260.0, 1.0]]).expand(50, -1), torch.Generator().manual_seed(0))[0]
    assert elements == ["Ni", "Al", "Co", "Cr"] and np.allclose(again.numpy(), first, atol=1e-6)
    bad = CliRunner().invoke(main, ["generate", str(tmp_path), "--target", "density=8"])
    assert bad.exit_code != 0 and "unknown conditions" in bad.output


def test_bo_planner_takes_starting_candidates_from_the_cvae():
    rng = np.random.default_rng(0)
    observations = []
    for _ in range(12):
        al, co, cr = rng.uniform(0.02, 0.14), rng.uniform(0, 0.18), rng.uniform(0, 0.18)
        point = DesignPoint(composition={"Ni": 1 - al - co - cr, "Al": al, "Co": co, "Cr": cr})
        observations.append(Observation(point=point, status="done", measurements={"hardness_hv": 1000 * al + 100 * co}))
    settings = {"candidate_generator": "cvae", "raw_samples": 64, "num_restarts": 2}
    hardness = ObjectiveConfig(measurement="hardness_hv", direction="maximize")
    planner = make_planner("bo", AgentContext(space=SPACE, objective=hardness), settings)
    x = planner.to_tensor([o.point for o in observations])
    y = torch.tensor([[o.measurements["hardness_hv"]] for o in observations], dtype=torch.double)
    generated = planner._generated_candidates(x, y, torch.ones(12, dtype=torch.bool), seed=0)
    assert generated.shape == (32, 4) and torch.allclose(generated.sum(-1), torch.ones(32, dtype=torch.double), atol=1e-6)
    assert generated[:, 1].mean() > x[:, 1].mean()  # asked for the best: aluminium-rich like the best results
    (point,) = planner.propose(ProposeRequest(n=1, observations=observations))
    SPACE.check(point)
    with pytest.raises(ValueError, match="works on compositions; the space has none"):
        make_planner("bo", AgentContext(space=SearchSpace.model_validate({"parameters": {"x": {"low": 0, "high": 1}}})),
                     settings)
