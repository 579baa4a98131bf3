"""Active learning of the MLIP as a campaign (issue 23): the MLIP agent's rounds, trust level and
exploration over the bus; `sdl run` with the selector planner survives kill -9 with no oracle result
lost, no structure labelled twice, and training resumed from the last saved round."""

import json

import numpy as np
import pytest
import yaml
from test_crash_resume import journal_rows, kill_and_wait_for_its_processes, sdl_run, wait_until

from sdl.agents.base import AgentContext
from sdl.agents.mlip_host import (
    MlipAgent,
    MlipExploration,
    MlipExploreRequest,
    MlipSettings,
    MlipState,
    MlipTrainRequest,
    MlipTrainSummary,
)
from sdl.bus import BusClient, Empty, RemoteError, Worker
from sdl.env.atomistic import random_composition, random_solid_solution
from sdl.env.cell_kinds import make_cell
from sdl.experiment import AtomicStructure, LabelledStructure
from sdl.instruments.atomistic import AseCalculatorOracle
from sdl.ledger import Ledger, LedgerError
from sdl.ledger.documents import ModelTrained
from sdl.report import write_report

from conftest import done_count, wait_for_service

ELEMENTS = ["Ni", "Cu"]
TINY_POTENTIAL = {"elements": ELEMENTS, "hidden_layers": [8]}


def labelled_payload(oracle, rng, n):
    out = []
    for _ in range(n):
        atoms = oracle.label(random_solid_solution(random_composition(ELEMENTS, rng), rng, repeat=1, rattle_ang=0.1))
        out.append(LabelledStructure(structure=AtomicStructure.from_atoms(atoms), energy_ev=atoms.get_potential_energy(),
                                     forces_ev_per_ang=atoms.get_forces().tolist()))
    return out


def test_the_mlip_agent_saves_its_rounds_learns_a_trust_level_and_explores(broker, tmp_path):
    rng = np.random.default_rng(5)
    oracle = AseCalculatorOracle(calculator="emt")
    first, second = labelled_payload(oracle, rng, 4), labelled_payload(oracle, rng, 3)
    settings = MlipSettings(architecture="nep", potential=TINY_POTENTIAL, committee_size=2, training={"epochs": 4, "batch_structures": 2},
                            device="cpu", rounds_dir=tmp_path / "rounds")
    worker = Worker(MlipAgent(settings, AgentContext()), broker.frontend_address, service_name="surrogate.mlip").start()
    try:
        wait_for_service(broker, "surrogate.mlip")
        with BusClient(broker.frontend_address) as client:
            call = lambda method, payload, reply: reply.model_validate(  # noqa: E731
                client.request("surrogate.mlip", method, payload, timeout_s=300))
            assert call("state", Empty(), MlipState).round == 0
            with pytest.raises(RemoteError, match="explore needs a committee that knows something"):
                client.request("surrogate.mlip", "explore", MlipExploreRequest(
                    starts=[first[0].structure], trajectories=["a"], temperatures_k=[300]), timeout_s=60)
            one = call("train", MlipTrainRequest(structures=first), MlipTrainSummary)
            assert one.round == 1 and one.trust_level_ev_per_ang is None  # nothing to calibrate on yet
            two = call("train", MlipTrainRequest(structures=first + second, warm_start=True, epochs=2), MlipTrainSummary)
            # the three new frames, seen before learning them, set the trust level
            assert two.round == 2 and two.trust_level_ev_per_ang > 0 and two.checkpoint.endswith("round_0002.pt")
            state = call("state", Empty(), MlipState)
            assert set(state.trained_keys) == {s.structure.key() for s in first + second}

            starts = [AtomicStructure.from_atoms(make_cell(kind, dict.fromkeys(ELEMENTS, 0.5), rng, repeat=1))
                      for kind in ("bulk", "vacancy")]
            explored = call("explore", MlipExploreRequest(starts=starts, trajectories=["bulk", "vacancy"],
                                                          temperatures_k=[600, 600], md_steps=10, snapshot_interval=5),
                            MlipExploration)
            assert explored.md_steps >= 1 and {f.trajectory for f in explored.frames} <= {"bulk", "vacancy"}
            level = explored.trust_level_ev_per_ang
            assert all(f.max_force_spread_ev_per_ang <= level for f in explored.frames if not f.untrusted)
            assert all(f.max_force_spread_ev_per_ang > level for f in explored.frames if f.untrusted)
            with pytest.raises(RemoteError, match="give one of each per start"):
                client.request("surrogate.mlip", "explore", {"starts": [starts[0].model_dump()], "trajectories": [],
                                                             "temperatures_k": [300]}, timeout_s=60)
    finally:
        worker.stop()
    # an agent started again on the same rounds_dir continues from round 2, with what it had learned
    again = MlipAgent(settings, AgentContext())
    assert again.round == 2 and again.trained and again.trust_level == pytest.approx(two.trust_level_ev_per_ang)
    assert set(again.trained_keys) == set(state.trained_keys)


def test_the_selector_is_granted_exactly_its_consultations_and_needs_the_mlip_agent():
    from sdl.agents.mlip_al_planner import MlipAlSettings
    from sdl.bus import Trust
    from sdl.campaign import parse_config
    from sdl.campaign.launcher import grant_for

    grant = grant_for("planner.mlip_al", MlipAlSettings(), "planner.mlip_al")
    trust = Trust(public=b"", secret=b"", keys={})
    trust.add("agent.planner.mlip_al", b"k" * 40, grant)
    assert trust.may_serve("agent.planner.mlip_al", "planner.mlip_al")
    assert trust.may_call("agent.planner.mlip_al", "surrogate.mlip", "explore")
    assert not trust.may_call("agent.planner.mlip_al", "instrument.dft", "run")  # it cannot label on its own
    assert not trust.may_call("agent.planner.mlip_al", "surrogate.mlip", "describe")
    without = {k: v for k, v in CAMPAIGN.items() if k != "surrogates"}
    with pytest.raises(ValueError, match="consults surrogate.mlip, which this campaign does not start"):
        parse_config(without)


CAMPAIGN = {
    "name": "mlip_al_kill",
    "seed": 3,
    "space": {"composition": {"elements": {"Ni": [0, 1], "Cu": [0, 1]}}},
    "objective": {"measurement": "energy_ev_per_atom"},
    "planner": {"kind": "mlip_al", "settings": {
        "repeat": 1, "initial_structures": 4, "retrain_epochs": 3, "labels_per_round": 2,
        "mix": [{"kind": "bulk", "starts": 1, "temperatures_k": [600]},
                {"kind": "vacancy", "starts": 1, "temperatures_k": [600]},
                {"kind": "surface_111", "starts": 2, "temperatures_k": [300]}],
        "exploration": {"md_steps": 10, "snapshot_interval": 2}}},
    "surrogates": [{"kind": "mlip", "settings": {
        "architecture": "nep", "potential": TINY_POTENTIAL, "committee_size": 2, "training": {"epochs": 5, "batch_structures": 2},
        "device": "cpu"}}],
    "instruments": [{"name": "dft", "driver": "ase_calculator", "options": {"calculator": "emt"}}],
    "stop": {"max_experiments": 16, "max_in_flight": 2},
    "ledger": {"synchronous": "normal"},
    "ray": {"num_cpus": 2},
}


def test_the_initial_design_is_no_bigger_than_asked_while_it_is_out():
    from sdl.agents.mlip_al_planner import MlipAlPlanner, MlipAlSettings
    from sdl.agents.planner import ProposeRequest
    from sdl.space import SearchSpace

    context = AgentContext(space=SearchSpace.model_validate(CAMPAIGN["space"]), seed=3)
    planner = MlipAlPlanner(MlipAlSettings(initial_structures=4, repeat=1), context)
    first = planner.propose(ProposeRequest(n=3))
    assert len(first) == 3 and all(p.tags["trajectory"] == "initial" for p in first)
    last = planner.propose(ProposeRequest(n=3, pending=first))
    assert len(last) == 1 and last[0].structure.key() not in {p.structure.key() for p in first}
    # all four out: nothing until they are labelled (the campaign asks again after a result)
    assert planner.propose(ProposeRequest(n=3, pending=first + last)) == []


def rounds_in_ledger(campaign_dir):
    try:
        with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
            return ledger.documents(ModelTrained)
    except LedgerError:  # not created yet
        return []


@pytest.mark.slow  # about 2 min (two Ray starts, training rounds); .ci/run runs it
def test_active_learning_campaign_survives_kill_9(tmp_path):
    config = json.loads(json.dumps(CAMPAIGN))
    config["surrogates"][0]["settings"]["rounds_dir"] = str(tmp_path / "rounds")
    config_path, campaign_dir = tmp_path / "al.yaml", tmp_path / "campaign"
    config_path.write_text(yaml.safe_dump(config))
    first = sdl_run(str(config_path), "--campaign-dir", str(campaign_dir))
    wait_until(first, lambda: len(rounds_in_ledger(campaign_dir)) >= 2 and done_count(campaign_dir) >= 8,
               timeout_s=400)
    kill_and_wait_for_its_processes(first)
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        results_at_kill = {r.experiment_id: r.result for r in ledger.experiments() if r.status == "done"}
    saved_round = json.loads((tmp_path / "rounds" / "state.json").read_text())["round"]

    resumed = sdl_run(str(config_path), "--campaign-dir", str(campaign_dir), "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        records = ledger.experiments()
        documents = ledger.documents()
    assert [r.status for r in records].count("done") == 16
    for experiment_id, result in results_at_kill.items():  # no oracle result lost or changed
        assert next(r.result for r in records if r.experiment_id == experiment_id) == result
    keys = [r.point.structure.key() for r in records]
    assert len(set(keys)) == len(keys)  # no structure labelled twice
    journal = journal_rows(campaign_dir)  # the DFT instrument computed each experiment once
    assert len(journal) == 16 and all(attempts == 1 for _, attempts in journal.values())
    rounds = [d.round for d in documents if isinstance(d, ModelTrained)]
    resumed_from = next(i for i, d in enumerate(documents) if d.kind == "campaign.resumed")
    after = [d for d in documents[resumed_from:] if isinstance(d, ModelTrained)]
    assert after and after[0].round == saved_round + 1  # training went on from the last saved round
    assert rounds == sorted(rounds)
    # the initial design is initial_structures cells, not more while they are out (max_in_flight 2)
    assert sum(r.point.tags.get("trajectory") == "initial" for r in records) == 4
    structures = [r.point.structure for r in records]
    # past the initial bulk cells, exploration over the mix reached the oracle: slabs or vacancy cells
    assert any(not s.fully_periodic or len(s.symbols) != 4 for s in structures[4:])

    # the report's page: learning curves per held-out set, calibration, kinds per round
    report = write_report(campaign_dir, held_out_per_set=2)
    text = report.read_text()
    assert "## Active learning of the interatomic potential" in text and "| round | labels |" in text
    for name in ("al_learning_curves.png", "al_calibration.png", "al_selected_kinds.png"):
        assert (report.parent / name).stat().st_size > 10_000
