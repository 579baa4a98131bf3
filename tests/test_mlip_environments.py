"""Active learning beyond the bulk (issue 23, first part): the cell kinds are physically what they say,
the vacancy hop is a path between its end states, selection on the worst atom notices one odd atom in
a cell, the pool-based loop labels from the shared pool within its budget and learns a trust level,
and an MD run with the committee flags the frame where it leaves that level."""

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.geometry import get_distances

from sdl.env.atomistic import random_composition, random_solid_solution
from sdl.env.cell_kinds import CELL_KINDS, make_cell, vacancy_migration_path
from sdl.instruments.atomistic import AseCalculatorOracle
from sdl.surrogates.mlip import Committee, MlipCalculator, load_committee, train_committee
from sdl.surrogates.mlip_environments import (
    EnvironmentsConfig,
    MixEntry,
    build_environment_tests,
    explore_pool,
    per_set_errors,
    run_pool_arm,
    selection_scores,
)
from sdl.surrogates.mlip_on_the_fly import TrustMonitor, run_trusted_md, trust_level

ELEMENTS = ["Ni", "Cu", "Al", "Pd"]
FRACTIONS = dict.fromkeys(ELEMENTS, 0.25)


def test_each_cell_kind_is_physically_what_it_says():
    rng = np.random.default_rng(0)
    bulk = make_cell("bulk", FRACTIONS, rng)
    assert len(bulk) == 32 and all(bulk.pbc)
    vacancy = make_cell("vacancy", FRACTIONS, rng)
    assert len(vacancy) == 31  # a site really emptied: nothing near it
    _, d = get_distances(vacancy.info["vacancy_position_ang"], vacancy.positions, cell=vacancy.cell, pbc=True)
    assert d.min() > 2.0
    for facet in ("111", "100"):
        slab = make_cell(f"surface_{facet}", FRACTIONS, rng)
        assert tuple(slab.pbc) == (True, True, False)
        z = slab.positions[:, 2]
        assert slab.cell[2, 2] - (z.max() - z.min()) >= 15.0  # vacuum along the third axis only
        assert sorted(set(slab.get_chemical_symbols())) == sorted(ELEMENTS)
    strained = make_cell("strained", FRACTIONS, rng)
    strain = np.asarray(strained.info["strain"])
    assert np.allclose(strain, strain.T) and np.abs(np.linalg.eigvalsh(strain)).max() <= 0.05
    reference = make_cell("bulk", FRACTIONS, np.random.default_rng(1))
    assert np.allclose(strained.cell[:], reference.cell[:] @ (np.eye(3) + strain))  # the strain is on the cell
    for kind in CELL_KINDS:
        atoms = make_cell(kind, FRACTIONS, rng)
        assert atoms.info["kind"] == kind
        assert min(get_distances(atoms.positions, cell=atoms.cell, pbc=atoms.pbc)[1][np.triu_indices(len(atoms), 1)]) > 2.0
    with pytest.raises(ValueError, match="unknown cell kind 'grain_boundary'"):
        make_cell("grain_boundary", FRACTIONS, rng)


def test_the_held_out_sets_hold_what_their_names_say_both_facets_among_the_surfaces():
    config = EnvironmentsConfig(elements=ELEMENTS, environment_tests={"per_set": 8, "migration_paths": 1,
                                                                      "images_per_path": 3, "md_interval": 2})
    tests = build_environment_tests(config, AseCalculatorOracle(calculator="emt"), np.random.default_rng(0))
    assert {name: len(frames) for name, frames in tests.items()} == {
        "bulk": 8, "vacancy": 8, "migration": 3, "surfaces": 8, "strained": 8, "hot": 8}
    assert [a.info["kind"] for a in tests["surfaces"]] == ["surface_111"] * 4 + ["surface_100"] * 4
    assert all(len(a) == 31 for a in tests["vacancy"]) and all(a.calc is not None for a in tests["hot"])
    # one frame per start: every frame its own composition (the set's energy MAE then spans compositions)
    one_each = config.with_held_out({"per_set": 4, "frames_per_start": 1})
    with pytest.raises(ValueError, match="frames_per_start"):
        config.with_held_out({"frames_per_start": 0})
    tests = build_environment_tests(one_each, AseCalculatorOracle(calculator="emt"), np.random.default_rng(1))
    assert [a.info["kind"] for a in tests["surfaces"]] == ["surface_111", "surface_100"] * 2
    assert len({a.get_chemical_formula() for a in tests["bulk"]}) == 4


def test_the_vacancy_hop_runs_from_one_end_state_to_the_other_over_a_barrier():
    path = vacancy_migration_path(FRACTIONS, np.random.default_rng(2), EMT, images=5)
    assert [p.info["image"] for p in path] == [1, 2, 3, 4, 5]
    hopper = path[0].info["hopper"]
    start = path[0].positions[hopper]
    travelled = [np.linalg.norm(p.positions[hopper] - start) for p in path]
    assert all(b > a for a, b in zip(travelled, travelled[1:]))  # the hopping atom moves on along the band
    energies = []
    for image in path:
        image.calc = EMT()
        energies.append(image.get_potential_energy())
    assert max(energies[1:4]) > max(energies[0], energies[-1])  # the saddle lies inside the band


@pytest.fixture(scope="module")
def committee_and_data():
    rng = np.random.default_rng(3)
    oracle = AseCalculatorOracle(calculator="emt")
    labelled = [oracle.label(random_solid_solution(random_composition(ELEMENTS, rng), rng, rattle_ang=0.05))
                for _ in range(8)]
    config = EnvironmentsConfig(elements=ELEMENTS, committee_size=2, training={"epochs": 60, "batch_structures": 4},
                                device="cpu")
    committee = Committee.new(config.potential, 2, seed=0)
    train_committee(committee, labelled, config.training, device="cpu")
    return committee, labelled, oracle, rng


def test_selection_on_the_worst_atom_notices_one_odd_atom(committee_and_data):
    committee, labelled, _, rng = committee_and_data
    odd = make_cell("bulk", FRACTIONS, rng)
    odd.positions[5] += [0.45, 0.3, 0.0]  # one atom far off its site, the rest perfect
    rattled = []
    for _ in range(4):
        cell = make_cell("bulk", FRACTIONS, rng)
        cell.positions += rng.normal(0, 0.08, cell.positions.shape)  # every atom a little off
        rattled.append(cell)
    worst = selection_scores("committee", committee, [odd, *rattled])
    assert int(np.argmax(worst)) == 0
    mean = selection_scores("committee_mean", committee, [odd, *rattled])
    assert mean[0] / mean.max() < worst[0] / worst.max()  # averaging dilutes the one odd atom
    # the extrapolation grade is measured against what was learned: a learned cell grades below the odd one
    grade = selection_scores("grade", committee, [labelled[0], odd], labelled=labelled)
    assert np.isfinite(grade).all() and grade[0] < grade[1]


def test_the_pool_loop_labels_from_the_shared_pool_within_budget(committee_and_data, tmp_path):
    committee, labelled, oracle, _ = committee_and_data
    config = EnvironmentsConfig(
        elements=ELEMENTS, committee_size=2, device="cpu", initial_structures=len(labelled), per_iteration=2,
        max_oracle_calls=len(labelled) + 4, retrain_epochs=5, final_fit_epochs=3, pool_explorations=1,
        mix=[MixEntry(kind="vacancy", starts=1, temperatures_k=[600]),
             MixEntry(kind="surface_111", starts=1, temperatures_k=[300])],
        exploration={"md_steps": 20, "snapshot_interval": 5})
    pool = explore_pool(committee, config, np.random.default_rng(4))
    assert pool and {a.info["kind"] for a in pool} <= {"vacancy", "surface_111"}
    assert all("trajectory" in a.info for a in pool)
    tests = {"bulk": labelled[:2], "vacancy": [AseCalculatorOracle(calculator="emt").label(pool[0])]}
    calls_before = oracle.calls
    history = run_pool_arm(config, "committee", oracle, labelled, committee, pool, tests, save_dir=tmp_path)
    assert history["oracle_calls"] == [8, 10, 12]
    chosen = [i for round_ in history["selected_pool_indices"] for i in round_]
    assert len(set(chosen)) == 4 and [pool[i].info["kind"] for i in chosen] == sum(history["selected_kinds"], [])
    assert oracle.calls - calls_before == 4  # the pool's frames, labelled once each
    assert all(kind in {"vacancy", "surface_111"} for round_ in history["selected_kinds"] for kind in round_)
    assert set(history["errors"][-1]) == {"bulk", "vacancy"}
    assert [len(r) for r in history["calibration"]] == [2, 2]  # each labelled frame: (spread, error) before learning it
    assert all(spread > 0 and error > 0 for r in history["calibration"] for spread, error in r)
    assert history["trust_level_ev_per_ang"] > 0
    assert -1 <= history["uncertainty_ranking"]["worst_atom"] <= 1
    final = history["final_fit"]  # the production fit on the same 12 labels, measured on the same sets
    assert final["epochs"] == 3 and set(final["errors"]) == {"bulk", "vacancy"}
    assert final["errors"] != history["errors"][-1] and final["errors"]["vacancy"]["energy_mae_mev_per_atom"] > 0
    # the kept committees are the loop's last model and the production fit: each reproduces its recorded errors
    for name, recorded in (("loop", history["errors"][-1]), ("final", final["errors"])):
        errors = per_set_errors(load_committee(tmp_path / f"committee_seed0_{name}.pt", device="cpu"), tests)
        for test_set, by_quantity in recorded.items():
            assert errors[test_set] == pytest.approx(by_quantity, rel=1e-5), (name, test_set)


def test_the_trust_level_is_where_the_expected_error_reaches_the_tolerance():
    # errors twice the spreads, one frame where the members agreed on a wrong answer
    calibration = [(0.1, 0.2), (0.2, 0.4), (0.3, 0.6), (0.01, 0.5)]
    assert trust_level(calibration, 50.0) == pytest.approx(4 * 0.050 / 2)  # 4x the target MAE, errors 2x spreads
    assert trust_level([], 0.2) is None


def test_the_on_the_fly_trust_check_flags_an_out_of_distribution_frame_and_hands_it_to_the_oracle(committee_and_data):
    committee, _, oracle, _ = committee_and_data
    rng = np.random.default_rng(11)
    calibration = run_trusted_md(make_cell("bulk", FRACTIONS, rng), committee, trust_level_ev_per_ang=1e9,
                                 temperature_k=300, steps=20, rng=rng, snapshot_interval=5)
    assert calibration.steps == 20 and not calibration.untrusted and len(calibration.worst_spreads_ev_per_ang) == 21
    assert [f.info["step"] for f in calibration.snapshots] == [5, 10, 15, 20]
    level = 1.5 * max(calibration.worst_spreads_ev_per_ang)

    squeezed = make_cell("bulk", FRACTIONS, rng)
    squeezed.set_cell(0.8 * squeezed.cell, scale_atoms=True)  # every bond 20 % short: no training cell came close
    handed = []
    run = run_trusted_md(squeezed, committee, trust_level_ev_per_ang=level, temperature_k=300, steps=20, rng=rng,
                         on_untrusted=lambda frame: handed.append(oracle.label(frame)))
    assert run.stopped_early and run.steps < 20
    frame = run.untrusted[0]
    assert frame.info["max_force_spread_ev_per_ang"] > level and frame.info["worst_atom"] in range(len(squeezed))
    assert len(handed) == 1 and handed[0].calc.results["forces"].shape == (len(squeezed), 3)  # labelled by the oracle

    with pytest.raises(ValueError, match="one potential has no spread"):
        single = squeezed.copy()
        single.calc = MlipCalculator(committee.members[0], device="cpu")
        TrustMonitor(single, level)
