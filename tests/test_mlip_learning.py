"""Active learning of the MLIP on a tiny budget: the loop runs, counts oracle calls, selects
what the committee is least sure of, and writes its learning curve; bad configs are refused."""

import json

import numpy as np
import pytest
from ase import Atoms

from sdl.settings import ConfigError
from sdl.surrogates.mlip_learning import (
    ActiveLearningConfig,
    load_active_learning_config,
    most_uncertain,
    trajectories_of,
)

TINY = {
    "name": "tiny", "elements": ["Ni", "Cu"], "repeat": 1,
    "architecture": {"radial_cutoff_ang": 4.5, "angular_cutoff_ang": 3.6, "hidden_layers": [8]},
    "committee_size": 2, "training": {"epochs": 8, "batch_structures": 4}, "retrain_epochs": 3,
    "initial_structures": 4, "per_iteration": 2, "max_oracle_calls": 8,
    "exploration": {"temperatures_k": [300, 1200], "starts_per_temperature": 2, "md_steps": 6, "snapshot_interval": 3},
    "test_set": {"random_solutions": 3, "md_snapshots": 2, "temperatures_k": [900]},
    "device": "cpu",
}


def test_active_learning_runs_on_a_tiny_budget(tmp_path):
    from sdl.surrogates.mlip_learning import active_learn

    config = ActiveLearningConfig.model_validate({**TINY, "out": str(tmp_path / "run")})
    seen = []
    summary = active_learn(config, progress=lambda arm, calls, mae: seen.append((arm, calls)))
    curves = summary["curves"]
    assert set(curves) == {"committee", "random"}
    for curve in curves.values():
        assert curve["oracle_calls"][0] == 4 and curve["oracle_calls"][-1] == 8
        assert curve["oracle_calls"] == sorted(curve["oracle_calls"])
        assert all(np.isfinite(curve["force_mae_mev_per_ang"]))
    # both arms start from the same labelled structures and the same untouched committee seeds
    assert curves["committee"]["force_mae_mev_per_ang"][0] == pytest.approx(curves["random"]["force_mae_mev_per_ang"][0])
    # every oracle call is counted: the held-out set, then each arm's labels (replays are free)
    assert summary["oracle_calls_for_test_set"] == 5
    assert summary["oracle_calls_total"] <= 5 + 8 + 8
    written = json.loads((tmp_path / "run" / "learning.json").read_text())
    assert written["calls_to_target"].keys() == written["calls_to_energy_target"].keys() == {"committee", "random"}
    assert (tmp_path / "run" / "committee.pt").is_file()
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 10_000
    assert ("committee", 4) in seen and ("random", 8) in seen


def test_a_score_function_decides_what_is_labelled():
    """run_arm's score hook (how bench/mlip_selection.py tries other rules): the frames it ranks
    highest, one per trajectory, are the ones sent to the oracle."""
    from sdl.instruments.atomistic import AseCalculatorOracle
    from sdl.surrogates.mlip_learning import run_arm

    config = ActiveLearningConfig.model_validate({**TINY, "max_oracle_calls": 6})
    oracle = AseCalculatorOracle(calculator="emt")
    labelled, offered = [], []
    label = oracle.label
    oracle.label = lambda atoms: labelled.append(atoms.copy()) or label(atoms)

    def coldest(committee, candidates, training):
        offered.append([c.info["exploration_temperature_k"] for c in candidates])
        assert len(training) == 4  # the labelled set so far is passed in
        return -np.array(offered[-1])

    try:
        test = [label(atoms) for atoms in labelled_test_structures()]
        curve, _ = run_arm(config, "coldest", oracle, test, score=coldest)
    finally:
        oracle.close()
    assert curve.selection == "coldest" and curve.oracle_calls == [4, 6]
    assert 1200 in offered[0] and 300 in offered[0]
    assert [a.info["exploration_temperature_k"] for a in labelled[4:]] == [300, 300]
    assert labelled[4].info["trajectory"] != labelled[5].info["trajectory"]


def labelled_test_structures():
    from sdl.env.atomistic import random_composition, random_solid_solution

    rng = np.random.default_rng(3)
    return [random_solid_solution(random_composition(TINY["elements"], rng), rng, repeat=1) for _ in range(3)]


def test_selection_takes_the_most_uncertain_from_distinct_trajectories():
    frames = []
    for trajectory in ("a", "a", "a", "b", "c"):
        atoms = Atoms("Ni")
        atoms.info["trajectory"] = trajectory
        frames.append(atoms)
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    assert most_uncertain(trajectories_of(frames), scores, 2, max_per_trajectory=1) == [0, 3]
    assert most_uncertain(trajectories_of(frames), scores, 4, max_per_trajectory=1) == [0, 3, 4, 1]  # refilled when short


def test_config_refuses_what_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="leaves nothing"):
        ActiveLearningConfig.model_validate({**TINY, "initial_structures": 8})
    with pytest.raises(ValueError, match="not chemical symbols"):
        ActiveLearningConfig.model_validate({**TINY, "elements": ["Ni", "Qq"]})
    with pytest.raises(ValueError, match="held-out set is empty"):
        ActiveLearningConfig.model_validate({**TINY, "test_set": {"random_solutions": 0, "md_snapshots": 0}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nselection: everything\n")
    with pytest.raises(ConfigError, match="selection"):
        load_active_learning_config(bad)


def test_cli_active_learn_help_and_bad_config(tmp_path):
    from click.testing import CliRunner

    from sdl.cli import main

    result = CliRunner().invoke(main, ["mlip", "active-learn", "--help"])
    assert result.exit_code == 0 and "oracle" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("elements: [Ni, Fe]\n")
    result = CliRunner().invoke(main, ["mlip", "active-learn", str(bad), "--no-progress"])
    assert result.exit_code != 0 and "EMT oracle has no parameters for ['Fe']" in result.output


def test_cli_without_progress_bar_logs_a_line_per_round(tmp_path):
    import yaml
    from click.testing import CliRunner

    from sdl.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(main, ["mlip", "active-learn", str(config), "--no-progress", "--no-random",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    rounds = [line for line in result.output.splitlines() if "oracle calls, held-out force MAE" in line]
    assert [line.split(":")[1].split()[0] for line in rounds] == ["4", "6", "8"]
    assert (tmp_path / "run" / "learning_curve.png").is_file()

    # the checkpoint carries the trust level learned from the labelled frames; MD with it flags a squeezed cell
    import ase.io
    from ase.build import bulk

    from sdl.surrogates.mlip import load_committee

    checkpoint = tmp_path / "run" / "committee.pt"
    assert load_committee(checkpoint, device="cpu").trust_level_ev_per_ang > 0
    squeezed = bulk("Ni", "fcc", a=0.8 * 3.52, cubic=True)
    squeezed[1].symbol = "Cu"
    ase.io.write(tmp_path / "squeezed.extxyz", squeezed)
    frames = tmp_path / "untrusted.extxyz"
    result = CliRunner().invoke(main, ["mlip", "md", str(checkpoint), str(tmp_path / "squeezed.extxyz"), "--steps", "5",
                                       "--trust-level", "1e-3", "--label", "emt", "--out", str(frames), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    # the perfect lattice has zero forces by symmetry for any model (no spread, up to float32's rounding: the
    # level is 1e-3 eV/A, not lower); its first MD step's spread is over 1 eV/A
    assert "untrusted frame(s); the first at step 1" in result.output and "run stopped there" in result.output
    labelled = ase.io.read(frames, index=":")
    assert len(labelled) == 1 and labelled[0].get_forces().shape == (4, 3)  # labelled by the EMT oracle
    result = CliRunner().invoke(main, ["mlip", "md", str(checkpoint), str(tmp_path / "squeezed.extxyz"), "--steps", "3",
                                       "--trust-level", "1e6", "--device", "cpu"])
    assert result.exit_code == 0 and "every frame within the trust level" in result.output
    ase.io.write(tmp_path / "fe.extxyz", bulk("Fe", "bcc", a=2.87))
    result = CliRunner().invoke(main, ["mlip", "md", str(checkpoint), str(tmp_path / "fe.extxyz"), "--device", "cpu"])
    assert result.exit_code != 0 and "has Fe; the potential knows Ni, Cu" in result.output
