"""MACE (mace-torch) beside the project's potential: a committee trains from scratch on oracle labels,
predicts energies, forces and a per-atom spread, and drives ASE's MD through mace-torch's calculator."""

import numpy as np
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet

from sdl.env.atomistic import random_composition, random_solid_solution
from sdl.instruments.atomistic import AseCalculatorOracle
from sdl.surrogates.mace_potential import MaceCommittee, MaceSettings
from sdl.surrogates.mlip_environments import energy_errors_mev_per_atom

from conftest import wait_for_service

ELEMENTS = ["Ni", "Cu"]
TINY = MaceSettings(channels=8, max_ell=2, correlation=2, num_bessel=4, epochs=6, batch_structures=2)


@pytest.fixture(scope="module")
def labelled():
    rng = np.random.default_rng(0)
    oracle = AseCalculatorOracle(calculator="emt")
    return [oracle.label(random_solid_solution(random_composition(ELEMENTS, rng), rng, repeat=1, rattle_ang=0.1))
            for _ in range(6)]


def test_a_mace_committee_trains_predicts_with_a_spread_and_runs_md(labelled):
    committee = MaceCommittee(ELEMENTS, TINY, size=2, seed=0, device="cpu")
    histories = committee.train(labelled[:4])
    assert len(histories) == 2 and all(h[-1] < h[0] for h in histories)  # each member's loss falls
    predictions = committee.predict(labelled[4:])
    for p, atoms in zip(predictions, labelled[4:]):
        assert p["forces"].shape == (len(atoms), 3) and np.isfinite(p["energy"])
        assert p["forces_spread"].shape == (len(atoms),) and p["forces_spread"].max() > 0  # seeds differ
    # E0s by least squares put the energy in the oracle's range from the first epochs
    assert abs(predictions[0]["energy"] - labelled[4].get_potential_energy()) / len(labelled[4]) < 1.0

    system = labelled[5].copy()
    system.calc = committee.calculator("cpu")
    start = system.get_potential_energy() + system.get_kinetic_energy()
    VelocityVerlet(system, timestep=1 * units.fs).run(3)
    assert np.isfinite(system.get_potential_energy()) and abs(system.get_potential_energy() - start) < 5.0


def test_stage_two_fits_the_energies_the_force_weighted_loss_leaves_loose(labelled):
    """mace-torch's Stage Two (energy weight 1000 for the last epochs) against the same epochs without it."""
    errors = {}
    for fraction in (0.0, 0.5):
        committee = MaceCommittee(ELEMENTS, TINY.model_copy(update={"epochs": 12, "stage_two_fraction": fraction}),
                                  size=1, seed=0, device="cpu")
        committee.train(labelled[:4])
        errors[fraction] = np.abs(energy_errors_mev_per_atom(committee.predict(labelled[:4]), labelled[:4])).mean()
    assert errors[0.5] < 0.5 * errors[0.0], errors


def test_mace_refuses_what_it_cannot_learn(labelled):
    committee = MaceCommittee(["Ni"], TINY, size=1, device="cpu")
    with pytest.raises(ValueError, match=r"structures hold \['Cu'\]; this committee knows \['Ni'\]"):
        committee.train(labelled[:2])
    with pytest.raises(ValueError, match="not been trained"):
        committee.calculator()
    with pytest.raises(ValueError, match="at least one model"):
        MaceCommittee(ELEMENTS, TINY, size=0)


def test_the_mlip_agent_hosts_mace_over_the_bus(broker, labelled, tmp_path):
    """`surrogate.mlip` with ``architecture: mace``: the same train/predict messages as the NEP committee."""
    from sdl.agents.base import AgentContext
    from sdl.agents.mlip_host import MlipAgent, MlipPrediction, MlipPredictRequest, MlipSettings, MlipTrainRequest
    from sdl.bus import BusClient, RemoteError, Worker
    from sdl.experiment import AtomicStructure, LabelledStructure

    payload = [LabelledStructure(structure=AtomicStructure.from_atoms(a), energy_ev=a.get_potential_energy(),
                                 forces_ev_per_ang=a.get_forces().tolist()) for a in labelled[:4]]
    settings = MlipSettings(potential={"elements": ELEMENTS}, mace=TINY.model_dump(),  # mace: the default
                            committee_size=2, device="cpu", rounds_dir=tmp_path / "rounds")
    worker = Worker(MlipAgent(settings, AgentContext()), broker.frontend_address, service_name="surrogate.mlip").start()
    try:
        wait_for_service(broker, "surrogate.mlip")
        with BusClient(broker.frontend_address) as client:
            client.request("surrogate.mlip", "train", MlipTrainRequest(structures=payload, epochs=3), timeout_s=300)
            request = MlipPredictRequest(structures=[AtomicStructure.from_atoms(a) for a in labelled[4:]])
            reply = MlipPrediction.model_validate(client.request("surrogate.mlip", "predict", request, timeout_s=60))
            predictions = [np.array(reply.forces_ev_per_ang[0])]
            assert [len(f) for f in reply.forces_ev_per_ang] == [len(a) for a in labelled[4:]]
            assert min(reply.max_force_std_ev_per_ang) > 0 and min(reply.energy_std_ev) > 0
            with pytest.raises(RemoteError, match="stress is served by the NEP architecture"):
                client.request("surrogate.mlip", "predict", request.model_copy(update={"stress": True}), timeout_s=60)
    finally:
        worker.stop()
    again = MlipAgent(settings, AgentContext())  # started again: the saved round, the same predictions
    assert settings.architecture == "mace" and again.round == 1 and again.trained
    np.testing.assert_allclose(again.mace.predict(labelled[4:])[0]["forces"], predictions[0], atol=1e-5)
    # what the campaign's report reads: a round of either architecture, predicting alike
    from sdl.surrogates.mace_potential import load_any_committee
    from sdl.surrogates.mlip import Committee, MlipConfig, save_committee

    saved = load_any_committee(tmp_path / "rounds" / "round_0001.pt", device="cpu")
    assert isinstance(saved, MaceCommittee)
    np.testing.assert_allclose(saved.predict(labelled[4:])[0]["forces"], predictions[0], atol=1e-5)
    nep = Committee.new(MlipConfig(elements=ELEMENTS, hidden_layers=[8]), 2)
    save_committee(nep, tmp_path / "nep.pt")
    ours = load_any_committee(tmp_path / "nep.pt", device="cpu").predict(labelled[4:])
    assert isinstance(ours[0]["energy"], float) and ours[0]["forces_spread"].shape == (len(labelled[4]),)
    np.testing.assert_allclose(ours[0]["forces"], nep.predict(labelled[4:])[0]["forces"], atol=1e-9)
    with pytest.raises(ValueError, match="checkpoints hold NEP committees"):
        MlipSettings(architecture="mace", checkpoint=__file__)
