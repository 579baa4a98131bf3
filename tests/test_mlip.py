"""The MLIP: invariances, forces and stress consistent with the energy, the ASE calculator
contract, committee uncertainty, and the DFT instrument (ASE EMT) that labels structures."""

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_stress
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list

from sdl.env.atomistic import md_snapshots, random_composition, random_solid_solution
from sdl.experiment import AtomicStructure, ExperimentSpec
from sdl.instruments.atomistic import AseCalculatorOracle
from sdl.surrogates.mlip import (
    Committee,
    ExtrapolationGrade,
    InteratomicPotential,
    MlipCalculator,
    MlipConfig,
    NeighbourListBuilder,
    TrainingSettings,
    evaluate_errors,
    load_committee,
    make_batch,
    save_committee,
    train_committee,
    train_potential,
)

from conftest import wait_for_service

ELEMENTS = ["Ni", "Cu", "Al"]
CONFIG = MlipConfig(elements=ELEMENTS, radial_cutoff_ang=4.5, angular_cutoff_ang=3.8, hidden_layers=[16])


def alloy(seed: int = 0, repeat: int = 2, rattle: float = 0.1) -> Atoms:
    rng = np.random.default_rng(seed)
    return random_solid_solution({"Ni": 0.5, "Cu": 0.3, "Al": 0.2}, rng, repeat=repeat, rattle_ang=rattle)


def energy_forces(model, atoms):
    out = model(make_batch([atoms], ELEMENTS, CONFIG.radial_cutoff_ang), forces=True)
    return out["energy"].item(), out["forces"].detach().numpy()


@pytest.fixture(scope="module")
def model():
    return InteratomicPotential(CONFIG, seed=3).double()


def test_energy_is_invariant_under_rotation_translation_and_permutation(model):
    atoms = alloy()
    e0, f0 = energy_forces(model, atoms)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0].numpy()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell[:] @ rotation.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rotation.T
    e1, f1 = energy_forces(model, rotated)
    assert e1 == pytest.approx(e0, abs=1e-9)
    np.testing.assert_allclose(f1, f0 @ rotation.T, atol=1e-9)  # forces rotate with the structure

    shifted = atoms.copy()
    shifted.positions += [0.7, -1.3, 2.9]  # includes wrapping across the periodic boundary
    shifted.wrap()
    assert energy_forces(model, shifted)[0] == pytest.approx(e0, abs=1e-9)

    order = np.random.default_rng(2).permutation(len(atoms))
    permuted = atoms[order]
    e2, f2 = energy_forces(model, permuted)
    assert e2 == pytest.approx(e0, abs=1e-9)
    np.testing.assert_allclose(f2, f0[order], atol=1e-9)


def test_swapping_unlike_atoms_changes_the_energy(model):
    atoms = alloy()
    swapped = atoms.copy()
    numbers = swapped.numbers.copy()
    i, j = np.flatnonzero(numbers == 28)[0], np.flatnonzero(numbers == 13)[0]
    numbers[[i, j]] = numbers[[j, i]]
    swapped.numbers = numbers
    assert abs(energy_forces(model, swapped)[0] - energy_forces(model, atoms)[0]) > 1e-6


def test_forces_are_minus_the_energy_gradient(model):
    atoms = alloy(seed=4)
    _, forces = energy_forces(model, atoms)
    h = 1e-5
    for atom, axis in [(0, 0), (5, 1), (17, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        numeric = -(energy_forces(model, plus)[0] - energy_forces(model, minus)[0]) / (2 * h)
        assert forces[atom, axis] == pytest.approx(numeric, abs=1e-6)


def test_stress_matches_finite_strain(model):
    atoms = alloy(seed=5)
    calc = MlipCalculator(model, device="cpu", float64=True, skin_ang=0.0)
    atoms.calc = calc
    analytic = atoms.get_stress(voigt=False)
    numeric = calculate_numerical_stress(atoms, eps=1e-5, voigt=False)
    np.testing.assert_allclose(analytic, numeric, atol=1e-7)


def test_ase_calculator_contract_and_md(model):
    atoms = alloy(seed=6)
    atoms.calc = MlipCalculator(model, device="cpu", float64=True)
    energy = atoms.get_potential_energy()
    assert atoms.get_forces().shape == (len(atoms), 3)
    assert atoms.get_stress().shape == (6,)
    assert atoms.get_potential_energies().sum() == pytest.approx(energy, abs=1e-8)
    # NVE with the Verlet-list calculator conserves energy (neighbour list reused within the skin)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    start = atoms.get_total_energy()
    dyn.run(40)
    assert atoms.get_total_energy() == pytest.approx(start, abs=2e-3 * len(atoms))
    with pytest.raises(ValueError, match="also has"):
        bad = bulk("Au", "fcc", a=4.08)
        bad.calc = MlipCalculator(model, device="cpu")
        bad.get_potential_energy()


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="not chemical symbols"):
        MlipConfig(elements=["Ni", "Xx"])
    with pytest.raises(ValueError, match="angular_cutoff_ang"):
        MlipConfig(elements=["Ni"], radial_cutoff_ang=4.0, angular_cutoff_ang=5.0)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    instrument = AseCalculatorOracle(journal_path=tmp_path_factory.mktemp("dft") / "journal.sqlite")
    yield instrument
    instrument.close()


def test_dft_instrument_labels_and_counts_calls(oracle):
    atoms = alloy(seed=7)
    labelled = oracle.label(atoms)
    reference = atoms.copy()
    reference.calc = EMT()
    assert labelled.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(labelled.get_forces(), reference.get_forces(), atol=1e-10)
    np.testing.assert_allclose(labelled.get_stress(), reference.get_stress(), atol=1e-10)
    calls = oracle.calls
    oracle.label(atoms)  # the same structure again: served from the journal, not recomputed
    assert oracle.calls == calls
    with pytest.raises(ValueError, match="EMT has no parameters for"):
        oracle.label(bulk("Fe", "bcc", a=2.87))
    with pytest.raises(ValueError, match="has no structure"):
        oracle.run(ExperimentSpec(experiment_id="e1", campaign_id="c"), idempotency_key="k-none")
    with pytest.raises(ValueError, match="symbols but"):
        AtomicStructure(symbols=["Ni", "Ni"], positions_ang=[(0, 0, 0)], cell_ang=((3, 0, 0), (0, 3, 0), (0, 0, 3)))
    with pytest.raises(ValueError, match="calculator"):
        AseCalculatorOracle(calculator="nosuchpackage.Calc")


def ni_cu_slab(vacuum_ang: float) -> Atoms:
    """A rattled (111) Ni-Cu slab, periodic in x and y only, with vacuum along z."""
    slab = fcc111("Ni", size=(2, 2, 4), vacuum=vacuum_ang, a=3.55)
    slab.symbols[[1, 6, 11]] = "Cu"
    slab.rattle(0.05, seed=2)
    return slab


def test_slabs_periodic_in_two_directions(model, oracle):
    """Issue 18: the oracle and the MLIP refused a (111) slab with pbc=[True, True, False]."""
    slab = ni_cu_slab(vacuum_ang=8.0)
    assert slab.pbc.tolist() == [True, True, False]
    # Neighbour pairs and their image shifts are ASE's own, also with a vacuum thinner than the cutoff
    # (no pair may cross the non-periodic direction).
    builder = NeighbourListBuilder(CONFIG.radial_cutoff_ang)
    for atoms in (slab, ni_cu_slab(vacuum_ang=0.5)):
        i, j, shifts = builder.pairs(torch.tensor(atoms.positions), torch.tensor(atoms.cell[:]), (True, True, False))
        ours = sorted(zip(i.tolist(), j.tolist(), map(tuple, shifts.long().tolist())))
        ase_pairs = neighbor_list("ijS", atoms, CONFIG.radial_cutoff_ang)
        assert ours == sorted(zip(ase_pairs[0].tolist(), ase_pairs[1].tolist(), map(tuple, ase_pairs[2].tolist())))
    # The DFT instrument computes the slab as EMT does; a slab has no stress (no volume).
    structure = AtomicStructure.from_atoms(slab)
    assert structure.periodic == (True, True, False) and structure.to_atoms().pbc.tolist() == [True, True, False]
    labelled = oracle.label(slab)
    reference = slab.copy()
    reference.calc = EMT()
    assert labelled.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(labelled.get_forces(), reference.get_forces(), atol=1e-10)
    assert "stress" not in labelled.calc.results
    # Against EMT: the surface costs energy (the slab lies above the same atoms in bulk, per EMT).
    bulk_ni, bulk_cu = bulk("Ni", "fcc", a=3.55), bulk("Cu", "fcc", a=3.55)
    per_atom = {}
    for name, b in (("Ni", bulk_ni), ("Cu", bulk_cu)):
        b.calc = EMT()
        per_atom[name] = b.get_potential_energy() / len(b)
    bulk_energy = sum(per_atom[s] for s in slab.get_chemical_symbols())
    area = np.linalg.norm(np.cross(slab.cell[0], slab.cell[1]))
    surface_energy = (labelled.get_potential_energy() - bulk_energy) / (2 * area)
    assert 0.05 < surface_energy < 0.2  # eV/A^2: EMT's (111) surfaces of Ni and Cu
    # The MLIP calculator: forces are minus the energy's gradient on the slab too, no stress, and an
    # in-plane periodic slab with a vacuum wider than the cutoff has the energy of the same atoms in a
    # fully periodic box (nothing reaches across the vacuum).
    calc = MlipCalculator(model, device="cpu", float64=True, skin_ang=0.0)
    slab.calc = calc
    energy, forces = slab.get_potential_energy(), slab.get_forces()
    h = 1e-5
    for atom, axis in [(0, 2), (9, 0), (15, 2)]:
        moved = [slab.copy(), slab.copy()]
        for sign, a in zip((1, -1), moved):
            a.positions[atom, axis] += sign * h
            a.calc = MlipCalculator(model, device="cpu", float64=True, skin_ang=0.0)
        numeric = -(moved[0].get_potential_energy() - moved[1].get_potential_energy()) / (2 * h)
        assert forces[atom, axis] == pytest.approx(numeric, abs=1e-6)
    boxed = slab.copy()
    boxed.pbc = True
    boxed.calc = MlipCalculator(model, device="cpu", float64=True, skin_ang=0.0)
    assert boxed.get_potential_energy() == pytest.approx(energy, abs=1e-9)
    with pytest.raises(Exception, match="stress"):
        slab.get_stress()
    wire = slab.copy()
    wire.pbc = [True, False, False]
    wire.calc = MlipCalculator(model, device="cpu", float64=True, skin_ang=0.0)
    assert np.isfinite(wire.get_potential_energy())
    with pytest.raises(ValueError, match=r"periodic along \['a', 'b', 'c'\], but those cell vectors are zero"):
        flat = slab.copy()
        flat.cell[2] = 0.0
        flat.pbc = True
        flat.calc = MlipCalculator(model, device="cpu")
        flat.get_potential_energy()


@pytest.fixture(scope="module")
def trained(oracle):
    rng = np.random.default_rng(0)
    train = [oracle.label(random_solid_solution(random_composition(ELEMENTS, rng), rng, rattle_ang=0.08))
             for _ in range(24)]
    committee = Committee.new(CONFIG, 3, seed=0)
    train_committee(committee, train, TrainingSettings(epochs=60, batch_structures=6), device="cpu")
    return committee, train


def test_training_fits_the_oracle_better_than_an_untrained_model(trained, oracle):
    committee, train = trained
    rng = np.random.default_rng(11)
    test = [oracle.label(random_solid_solution(random_composition(ELEMENTS, rng), rng, rattle_ang=0.08))
            for _ in range(6)]
    fitted = evaluate_errors(committee, test)
    untrained = evaluate_errors(InteratomicPotential(CONFIG, seed=99), test)
    assert fitted["force_mae_mev_per_ang"] < 0.6 * untrained["force_mae_mev_per_ang"]
    assert fitted["energy_mae_mev_per_atom"] < 0.5 * untrained["energy_mae_mev_per_atom"]


def test_a_slab_in_the_minibatch_does_not_switch_the_stress_term_off(oracle):
    """Every minibatch here holds a slab (no stress label) beside strained bulk cells: their stresses
    are still fitted, as when the weight is zero they are not."""
    rng = np.random.default_rng(5)
    cells = []
    for k in range(3):
        cell = random_solid_solution(random_composition(ELEMENTS, rng), rng, rattle_ang=0.05)
        cell.set_cell(cell.cell[:] * (0.96 + 0.04 * k), scale_atoms=True)
        cells.append(oracle.label(cell))
    data = cells + [oracle.label(ni_cu_slab(vacuum_ang=8.0))]
    stress_errors = {}
    for weight in (10000.0, 0.0):  # a weight that shows within 60 epochs
        potential = InteratomicPotential(CONFIG, seed=1)
        train_potential(potential, data, TrainingSettings(epochs=60, batch_structures=len(data), stress_weight=weight),
                        device="cpu")
        stress_errors[weight] = evaluate_errors(potential, cells)["stress_mae_mev_per_ang3"]
    assert stress_errors[10000.0] < 0.5 * stress_errors[0.0], stress_errors


def test_committee_and_grade_rise_off_distribution(trained):
    committee, train = trained
    rng = np.random.default_rng(12)
    inside = [random_solid_solution(random_composition(ELEMENTS, rng), rng, rattle_ang=0.08) for _ in range(4)]
    outside = []
    for atoms in inside:
        squeezed = atoms.copy()
        squeezed.set_cell(atoms.cell[:] * 0.85, scale_atoms=True)  # 15 % compression, never seen
        squeezed.positions += rng.normal(0, 0.25, squeezed.positions.shape)
        outside.append(squeezed)
    param = next(committee.parameters())
    spread = {}
    for name, group in (("inside", inside), ("outside", outside)):
        batch = make_batch(group, ELEMENTS, CONFIG.radial_cutoff_ang, dtype=param.dtype)
        spread[name] = committee(batch)["forces_std"].norm(dim=1).mean().item()
    assert spread["outside"] > 2 * spread["inside"]

    member = committee.members[0]
    train_batch = make_batch(train, ELEMENTS, CONFIG.radial_cutoff_ang, dtype=param.dtype)
    grade = ExtrapolationGrade(member.descriptors(train_batch))
    grades = {}
    for name, group in (("inside", inside), ("outside", outside)):
        batch = make_batch(group, ELEMENTS, CONFIG.radial_cutoff_ang, dtype=param.dtype)
        grades[name] = grade.structures(member.descriptors(batch), batch.structure, batch.n_structures)
    assert grades["outside"].min() > grades["inside"].max()


def test_committee_round_trips_through_a_file(trained, tmp_path):
    committee, train = trained
    save_committee(committee, tmp_path / "committee.pt")
    loaded = load_committee(tmp_path / "committee.pt", device="cpu")
    batch = make_batch(train[:2], ELEMENTS, CONFIG.radial_cutoff_ang, dtype=next(committee.parameters()).dtype)
    torch.testing.assert_close(loaded(batch)["energy"], committee(batch)["energy"])


def test_md_snapshots_with_the_oracle():
    rng = np.random.default_rng(3)
    snaps = md_snapshots(alloy(seed=8, rattle=0.0), EMT(), temperature_k=600, steps=20, interval=5, rng=rng)
    assert len(snaps) == 4 and all(s.calc is None for s in snaps)
    assert not np.allclose(snaps[0].positions, snaps[-1].positions)


# -- the surrogate.mlip agent, as a Ray actor on the bus ---------------------------------------------


def test_mlip_agent_trains_and_predicts_over_the_bus(broker, oracle):
    """The agent's methods over real sockets (a campaign hosts it as a Ray actor: test_agents_campaign).
    Its first training imports torch's compiler, seconds under the GIL: the worker stays alive."""
    from sdl.agents.base import AgentContext
    from sdl.agents.mlip_host import (
        MlipAgent,
        MlipPrediction,
        MlipPredictRequest,
        MlipSettings,
        MlipTrainRequest,
        MlipTrainSummary,
    )
    from sdl.bus import BusClient, RemoteError, Worker
    from sdl.experiment import LabelledStructure

    rng = np.random.default_rng(21)
    labelled = [oracle.label(random_solid_solution(random_composition(ELEMENTS, rng), rng)) for _ in range(6)]
    payload = [LabelledStructure(structure=AtomicStructure.from_atoms(a), energy_ev=a.get_potential_energy(),
                                 forces_ev_per_ang=a.get_forces().tolist(),
                                 stress_ev_per_ang3=a.get_stress(voigt=False).tolist()) for a in labelled]
    settings = MlipSettings(architecture="nep", potential=CONFIG, committee_size=2,
                            training={"epochs": 5, "batch_structures": 3},
                            device="cpu")
    worker = Worker(MlipAgent(settings, AgentContext()), broker.frontend_address, service_name="surrogate.mlip").start()
    try:
        wait_for_service(broker, "surrogate.mlip")
        with BusClient(broker.frontend_address) as client:
            request = MlipPredictRequest(structures=[AtomicStructure.from_atoms(labelled[0])])
            with pytest.raises(RemoteError, match="not been trained"):
                client.request("surrogate.mlip", "predict", request, timeout_s=60)
            summary = MlipTrainSummary.model_validate(
                client.request("surrogate.mlip", "train", MlipTrainRequest(structures=payload), timeout_s=300))
            assert summary.n_train == 6 and summary.device == "cpu" and len(summary.final_loss) == 2
            reply = MlipPrediction.model_validate(client.request("surrogate.mlip", "predict", request, timeout_s=60))
            assert len(reply.forces_ev_per_ang[0]) == len(labelled[0])
            assert reply.energy_std_ev[0] > 0 and reply.max_force_std_ev_per_ang[0] > 0
            gold = bulk("Au", "fcc", a=4.08, cubic=True)
            with pytest.raises(RemoteError, match="also has"):
                client.request("surrogate.mlip", "predict",
                               MlipPredictRequest(structures=[AtomicStructure.from_atoms(gold)]), timeout_s=60)
    finally:
        worker.stop()
