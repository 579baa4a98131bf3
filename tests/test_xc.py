"""The learned exchange-correlation functional (issue 22): exact constraints on random inputs, PBE and
PW92 written out against libxc, the potential from autograd against finite differences, SCF of H2 and
the H atom with a small trained checkpoint, the PySCF DFT instrument over the bus, `sdl xc check`."""

import json

import numpy as np
import pytest
import torch
from ase.build import molecule
from click.testing import CliRunner

from sdl.cli import main
from sdl.env.quantum_chemistry import build_molecule, make_ks, reference_atomization_kcal, run_scf
from sdl.surrogates.xc_functional import (
    FC_MAX,
    FX_MIN,
    LIEB_OXFORD_FX,
    XcFunctional,
    pbe_energy_density,
    pw92_correlation,
    pyscf_eval_xc,
)
from sdl.surrogates.xc_training import XcConfig, train

BASIS = "def2-svp"


def random_density(n=4000, seed=0, polarised=True):
    """Spin densities over 1e-6..1e2 bohr^-3 and reduced gradients up to s ~ 10 (as tensors)."""
    rng = np.random.default_rng(seed)
    n_tot = 10 ** rng.uniform(-6, 2, n)
    zeta = rng.uniform(-1, 1, n) if polarised else np.zeros(n)
    rho_a, rho_b = n_tot * (1 + zeta) / 2, n_tot * (1 - zeta) / 2
    s = 10 ** rng.uniform(-3, 1, n)
    grad = s * 2 * (3 * np.pi**2) ** (1 / 3) * n_tot ** (4 / 3)
    ga, gb = grad * (1 + zeta) / 2, grad * (1 - zeta) / 2
    return [torch.tensor(x) for x in (rho_a, rho_b, ga**2, ga * gb, gb**2)]


def scrambled(model: XcFunctional, scale: float = 5.0, seed: int = 0) -> XcFunctional:
    """The model with large random weights: constraints built in must hold for any weights."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, scale)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small functional trained for a few steps on LiH and CH4 (def2-SVP, coarse grid): enough to run
    the SCF, the constraint checks and the instrument, not to be accurate."""
    import os

    folder = tmp_path_factory.mktemp("xc")
    old = os.environ.get("SDL_CACHE_DIR")
    os.environ["SDL_CACHE_DIR"] = str(folder / "cache")
    try:
        config = XcConfig(molecules=["LiH", "CH4"], test_fraction=0.5, basis=BASIS, grid_level=1, pbe_fit_steps=300,
                          steps=5, out=folder / "run")
        summary = train(config)
    finally:
        if old is None:
            os.environ.pop("SDL_CACHE_DIR")
        else:
            os.environ["SDL_CACHE_DIR"] = old
    return summary


# ---- the functional form: constraints that hold for any weights --------------------------------------

def test_pbe_and_pw92_written_out_agree_with_libxc():
    from pyscf.dft import libxc

    args = random_density()
    e_x, e_c = pbe_energy_density(*args)
    rho_a, rho_b, saa, sab, sbb = (a.numpy() for a in args)
    # libxc takes (rho, dx, dy, dz) per spin; put the gradients along x with the right contractions
    ga, gb = np.sqrt(saa), np.sqrt(sbb)
    zeros = np.zeros_like(ga)
    rho = np.stack([np.stack([rho_a, ga, zeros, zeros]), np.stack([rho_b, gb, zeros, zeros])])
    for code, ours in (("pbe,", e_x), (",pbe", e_c)):
        exc = libxc.eval_xc(code, rho, spin=1, deriv=0)[0] * (rho_a + rho_b)
        assert np.allclose(ours.numpy(), exc, rtol=1e-9, atol=1e-14), code
    rs = torch.tensor(np.logspace(-2, 2, 50))
    for zeta in (0.0, 0.5, 1 - 1e-12):
        n = 3 / (4 * np.pi * rs.numpy() ** 3)
        z = np.full_like(n, zeta)
        lda = libxc.eval_xc(",lda_c_pw_mod", np.stack([n * (1 + z) / 2, n * (1 - z) / 2]), spin=1, deriv=0)[0]
        assert np.allclose(pw92_correlation(rs, torch.full_like(rs, zeta)).numpy(), lda, rtol=1e-8)


def test_uniform_gas_limit_holds_for_any_weights():
    model = scrambled(XcFunctional())
    rho_a, rho_b, *_ = random_density()
    zero = torch.zeros_like(rho_a)
    e_x, e_c = model.energy_density(rho_a, rho_b, zero, zero, zero)
    n = rho_a + rho_b
    lda_x = -0.75 * (3 / np.pi) ** (1 / 3) * 0.5 * ((2 * rho_a) ** (4 / 3) + (2 * rho_b) ** (4 / 3))
    zeta = torch.clamp((rho_a - rho_b) / n, -1 + 1e-12, 1 - 1e-12)
    assert torch.allclose(e_x, lda_x, rtol=1e-13)
    assert torch.allclose(e_c, n * pw92_correlation((3 / (4 * np.pi * n)) ** (1 / 3), zeta), rtol=1e-13)


def test_exchange_spin_and_coordinate_scaling_hold_for_any_weights():
    model = scrambled(XcFunctional(), seed=1)
    rho_a, rho_b, saa, sab, sbb = random_density(seed=1)
    e_x, _ = model.energy_density(rho_a, rho_b, saa, sab, sbb)
    ex_a, _ = model.energy_density(rho_a, rho_a, saa, saa, saa)  # the unpolarised density 2 n_a
    ex_b, _ = model.energy_density(rho_b, rho_b, sbb, sbb, sbb)
    assert torch.allclose(e_x, (ex_a + ex_b) / 2, rtol=1e-12)
    for scale in (0.3, 3.0):
        scaled, _ = model.energy_density(rho_a * scale**3, rho_b * scale**3, saa * scale**8, sab * scale**8,
                                         sbb * scale**8)
        assert torch.allclose(scaled, scale**4 * e_x, rtol=1e-11)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounds_hold_for_any_weights_and_inputs(seed):
    model = scrambled(XcFunctional(hidden=12), scale=10.0, seed=seed).requires_grad_(False)
    s2 = torch.tensor(10 ** np.random.default_rng(seed).uniform(-6, 6, 20000))
    f_x = model.exchange_enhancement(s2)
    assert float(f_x.max()) <= LIEB_OXFORD_FX and float(f_x.min()) >= FX_MIN  # Lieb-Oxford; exchange < 0
    args = random_density(seed=seed)
    e_x, e_c = model.energy_density(*args)
    assert float(e_c.max()) <= 0.0  # correlation never positive
    n = args[0] + args[1]
    assert float(((e_x + e_c) / (n ** (4 / 3))).min()) >= -1.679 * (1 + 1e-12)  # Lieb-Oxford on the whole of e_xc
    rs = torch.tensor(10 ** np.random.default_rng(seed).uniform(-2, 2, 20000))
    f_c = model.correlation_enhancement(rs, torch.zeros_like(rs), s2)
    assert float(f_c.min()) >= 0.0 and float(f_c.max()) <= FC_MAX * (1 + 1e-12)


def test_the_potential_from_autograd_matches_finite_differences_of_the_energy():
    model = scrambled(XcFunctional(), scale=0.5, seed=3)
    eval_xc = pyscf_eval_xc(model)
    rng = np.random.default_rng(3)
    points = 50
    for spin in (0, 1):
        shape = (4, points) if spin == 0 else (2, 4, points)
        rho = rng.uniform(0.05, 1.0, shape) * np.array([1.0, 0.3, 0.3, 0.3])[:, None]
        exc, (vrho, vsigma, _, _), _, _ = eval_xc("learned", rho, spin=spin)
        total = rho[0] if spin == 0 else rho[0][0] + rho[1][0]
        energy = lambda r: eval_xc("learned", r, spin=spin)[0] * (r[0] if spin == 0 else r[0][0] + r[1][0])  # noqa: E731
        h = 1e-6
        # d e / d rho_a (density only)
        bumped_up, bumped_down = rho.copy(), rho.copy()
        index = (0,) if spin == 0 else (0, 0)
        bumped_up[index] += h
        bumped_down[index] -= h
        fd = (energy(bumped_up) - energy(bumped_down)) / (2 * h)
        analytic = vrho if spin == 0 else vrho[:, 0]
        assert np.allclose(fd, analytic, rtol=1e-6, atol=1e-9)
        # d e / d sigma(_aa) through the x component of the gradient: d e/d g_x = 2 g_x de/dsigma (+ ab term)
        index = (1,) if spin == 0 else (0, 1)
        bumped_up, bumped_down = rho.copy(), rho.copy()
        bumped_up[index] += h
        bumped_down[index] -= h
        fd = (energy(bumped_up) - energy(bumped_down)) / (2 * h)
        analytic = 2 * rho[1] * vsigma if spin == 0 else 2 * rho[0][1] * vsigma[:, 0] + rho[1][1] * vsigma[:, 1]
        assert np.allclose(fd, analytic, rtol=1e-6, atol=1e-9)
        assert np.all(np.isfinite(exc)) and np.all(total > 0)


def test_the_xc_matrix_is_the_derivative_of_the_xc_energy_for_a_molecule():
    """E_xc[D + e dD] - E_xc[D - e dD] = 2 e tr(V_xc dD), with V_xc from autograd inside PySCF."""
    model = scrambled(XcFunctional(), scale=0.3, seed=4)
    mf = make_ks(build_molecule(molecule("H2O"), BASIS), pyscf_eval_xc(model), grid_level=1)
    mf.grids.build()
    dm = mf.get_init_guess()
    rng = np.random.default_rng(4)
    direction = rng.normal(size=dm.shape)
    direction = (direction + direction.T) * 1e-3
    _, _, vxc = mf._numint.nr_rks(mf.mol, mf.grids, "learned", dm)
    step = 1e-4
    e_up = mf._numint.nr_rks(mf.mol, mf.grids, "learned", dm + step * direction)[1]
    e_down = mf._numint.nr_rks(mf.mol, mf.grids, "learned", dm - step * direction)[1]
    assert (e_up - e_down) / (2 * step) == pytest.approx(np.einsum("ij,ij->", vxc, direction), rel=1e-6)


# ---- the reference data --------------------------------------------------------------------------------

def test_reference_atomization_energies_follow_from_asess_g2_1_data():
    # D_e from the experimental enthalpies of formation, thermal corrections and ZPEs; published D_e
    # (e.g. Feller and Peterson's tables): CH4 420.2, H2O 232.6, N2 228.5 kcal/mol
    assert reference_atomization_kcal("CH4") == pytest.approx(420.2, abs=0.3)
    assert reference_atomization_kcal("H2O") == pytest.approx(232.6, abs=0.3)
    assert reference_atomization_kcal("N2") == pytest.approx(228.5, abs=0.3)
    with pytest.raises(ValueError, match="'Xe2' is not a G2-1 molecule"):
        reference_atomization_kcal("Xe2")


# ---- a trained checkpoint self-consistently ------------------------------------------------------------

def test_scf_of_h2_and_the_h_atom_with_the_learned_functional(checkpoint):
    model = XcFunctional.load(checkpoint["checkpoint"])
    assert model.metadata["train"] and model.metadata["test"]
    xc = pyscf_eval_xc(model)
    for system in (molecule("H2"), "H"):
        mol = build_molecule(system, BASIS)
        learned, pbe = run_scf(mol, xc, grid_level=1), run_scf(mol, "pbe", grid_level=1)
        assert learned.converged
        assert learned.energy_ha == pytest.approx(pbe.energy_ha, abs=0.02)  # started from PBE, a few steps on


def test_sdl_xc_check_reports_every_constraint(checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["xc", "check", checkpoint["checkpoint"], "--grid-level", "1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("["):])
    by_name = {r["constraint"]: r for r in rows}
    assert all(r["holds"] for r in rows if r["treatment"].startswith("by construction"))
    assert by_name["exchange spin scaling"]["measured"] < 1e-12
    assert by_name["local Lieb-Oxford bound e_xc >= -1.679 n^(4/3)"]["holds"]
    assert abs(by_name["size consistency: (H2O)2 at 50 A = 2 x H2O"]["measured"]) < 0.1  # mHa
    assert not by_name["v_xc -> -1/r far from H (r v_xc at r = 8 bohr)"]["holds"]  # a GGA cannot; it says so
    for needed in ("one electron: H atom energy -0.5 Ha", "linearity of E(N): H, N = 1/2",
                   "correlation scaling inequalities (H, H2O; l = 0.5-2)"):
        assert needed in by_name
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    result = CliRunner().invoke(main, ["xc", "check", str(bad), "--no-scf"])
    assert result.exit_code != 0 and "is not a functional checkpoint" in result.output
    assert "Traceback" not in result.output


def test_a_bad_config_is_one_clear_line(tmp_path):
    config = tmp_path / "xc.yaml"
    config.write_text("molecules: [CH4, Unobtainium]\n")
    result = CliRunner().invoke(main, ["xc", "train", str(config)])
    assert result.exit_code != 0 and "not G2-1 molecules: Unobtainium" in result.output
    config.write_text("compare: [pbe, m06]\n")
    result = CliRunner().invoke(main, ["xc", "bench", str(config)])
    assert "unknown functional(s) m06" in result.output and "Traceback" not in result.output


# ---- the DFT instrument with a PySCF backend, over the bus -----------------------------------------------

def test_the_pyscf_dft_instrument_answers_over_the_bus(broker, checkpoint, tmp_path):
    from sdl.agents.instrument_driver import InstrumentDriverAgent, InstrumentDriverSettings, RunExperiment
    from sdl.bus import BusClient, RemoteError, Worker
    from sdl.experiment import AtomicStructure, ExperimentResult, ExperimentSpec

    from conftest import wait_for_service

    options = {"calculator": "pyscf",
               "calculator_options": {"xc": checkpoint["checkpoint"], "basis": BASIS, "grid_level": 1}}
    agent = InstrumentDriverAgent(InstrumentDriverSettings(driver="ase_calculator", options=options))
    worker = Worker(agent, broker.frontend_address, service_name="instrument.dft").start()
    h2 = AtomicStructure.from_atoms(molecule("H2"))
    h2 = h2.model_copy(update={"periodic": False})
    try:
        wait_for_service(broker, "instrument.dft")
        with BusClient(broker.frontend_address) as client:
            reply = client.request("instrument.dft", "run", RunExperiment(experiment=ExperimentSpec(
                experiment_id="h2", campaign_id="xc", structure=h2)), idempotency_key="h2-1", timeout_s=120)
            result = ExperimentResult.model_validate(reply)
            periodic = h2.model_copy(update={"periodic": True, "cell_ang": ((5, 0, 0), (0, 5, 0), (0, 0, 5))})
            with pytest.raises(RemoteError, match="computes molecules and clusters"):
                client.request("instrument.dft", "run", RunExperiment(experiment=ExperimentSpec(
                    experiment_id="bulk", campaign_id="xc", structure=periodic)), idempotency_key="b-1", timeout_s=60)
    finally:
        worker.stop()
    learned = run_scf(build_molecule(molecule("H2"), BASIS), pyscf_eval_xc(XcFunctional.load(checkpoint["checkpoint"])),
                      grid_level=1)
    from ase.units import Hartree

    assert result.measurements["energy_ev"] == pytest.approx(learned.energy_ha * Hartree, abs=1e-6)
    forces = np.asarray(result.arrays["forces_ev_per_ang"])
    assert forces.shape == (2, 3) and abs(forces[0, 2] + forces[1, 2]) < 1e-3  # equal and opposite along the bond


def test_the_pyscf_calculator_refuses_what_it_cannot_do():
    from sdl.instruments.atomistic import AseCalculatorOracle

    with pytest.raises(ValueError, match="xc 'm06x'"):
        AseCalculatorOracle(calculator="pyscf", calculator_options={"xc": "m06x"})
    with pytest.raises(ValueError, match="unknown option"):
        AseCalculatorOracle(calculator="pyscf", calculator_options={"functional": "pbe"})
