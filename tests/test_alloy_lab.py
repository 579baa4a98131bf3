"""Simulated alloy-lab instruments: limits refused (never clamped), melt chemistry, detection limits,
faults, and a short demo-like campaign through the whole workflow on a small CALPHAD grid."""

import shutil

import numpy as np
import pytest
import ray

from sdl.agents.instrument_driver import InstrumentDriverAgent, InstrumentDriverSettings, RunExperiment
from sdl.campaign import Campaign, parse_config
from sdl.experiment import DesignPoint, ExperimentSpec, ProcessStep
from sdl.instruments.alloy_lab import ArcMelter, Furnace, HardnessTester, XrdPhaseId
from sdl.instruments.base import InstrumentFault, InstrumentRefused
from sdl.instruments.limits import LimitExceeded
from sdl.ledger import Ledger
from sdl.ledger.documents import ExperimentStep, FeasibilityLearned
from sdl.report import write_report
from sdl.wire import Request

SMALL_TWIN = {
    "grid": {"Al": {"low": 0.0, "high": 0.15, "points": 4}, "Co": {"low": 0.05, "high": 0.15, "points": 2},
             "Cr": {"low": 0.05, "high": 0.15, "points": 2}},
    "temperatures_k": [1050.0, 1100.0, 1500.0],
}
ALLOY = {"Al": 0.10, "Co": 0.10, "Cr": 0.10, "Ni": 0.70}
ROUTE = [ProcessStep(operation="solutionise", temperature_k=1500, duration_s=3600, quench_medium="water"),
         ProcessStep(operation="age", temperature_k=1100, duration_s=4 * 3600, quench_medium="water")]


def spec(i=0, route=ROUTE, specimen=None, composition=ALLOY):
    return ExperimentSpec(experiment_id=f"e{i}", campaign_id="c", point=DesignPoint(composition=composition),
                          process=route, specimen=specimen or {})


LIMITS = {"min_temperature_k": 1050, "max_temperature_k": 1500}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("calphad") / "cache.sqlite")


@pytest.fixture(scope="module")
def furnace(cache):
    return Furnace(twin=SMALL_TWIN, cache_path=cache, limits=LIMITS, time_scale=0)


@pytest.mark.parametrize("step, fragment", [
    (ProcessStep(operation="solutionise", temperature_k=1520, duration_s=60), "above the furnace's maximum 1500.0 K"),
    (ProcessStep(operation="age", temperature_k=900, duration_s=60), "below the furnace's minimum 1050.0 K"),
    (ProcessStep(operation="age", temperature_k=1100, duration_s=60, ramp_k_per_s=5.0), "maximum is 0.5 K/s"),
    (ProcessStep(operation="age", temperature_k=1100, duration_s=30 * 86400), "runs at most"),
])
def test_furnace_refuses_commands_over_its_limits(furnace, step, fragment):
    with pytest.raises(LimitExceeded, match=fragment):
        furnace.run(spec(route=[step]), idempotency_key=f"k-{fragment}")
    assert "running" not in furnace.journal.summary()  # refused before anything: no row left running


def test_a_refused_command_leaves_no_journal_row(furnace):
    outside = {"Al": 0.10, "Co": 0.02, "Cr": 0.10, "Ni": 0.78}  # Co below the twin's CALPHAD table
    with pytest.raises(InstrumentRefused, match=r"x\(Co\) = 0.0200 lies outside the twin's CALPHAD table \[0.05, 0.15\]"):
        furnace.run(spec(composition=outside), idempotency_key="outside")
    assert "running" not in furnace.journal.summary()


def test_an_empty_route_leaves_the_specimen_as_cast(furnace):
    """The process planner's as_cast choice: the furnace runs nothing and records the as-cast state."""
    untreated = furnace.run(spec(i=7, route=[]), idempotency_key="as-cast")
    treated = furnace.run(spec(i=8), idempotency_key="treated")
    assert untreated.measurements["gamma_prime_fraction"] == 0.0 < treated.measurements["gamma_prime_fraction"]
    assert furnace.lab_time_s(spec(route=[])) == 0.0


def test_refusal_reaches_the_caller_as_a_clear_error_reply(cache):
    service = InstrumentDriverAgent(InstrumentDriverSettings(
        driver="furnace", options={"twin": SMALL_TWIN, "cache_path": cache, "limits": LIMITS}))
    hot = spec(route=[ProcessStep(operation="solutionise", temperature_k=1600, duration_s=60)])
    reply = service.handle(Request(service="instrument.furnace", method="run", idempotency_key="k",
                                   payload=RunExperiment(experiment=hot).model_dump(mode="json")))
    assert not reply.ok and reply.error.code == "invalid_payload" and "above the furnace's maximum" in reply.error.message


def test_furnace_limits_must_fit_the_twin(cache):
    with pytest.raises(ValueError, match="exceed the twin's tabulated 1050.0-1500.0 K"):
        Furnace(twin=SMALL_TWIN, cache_path=cache)  # default limits 900-1500 K


def test_furnace_reports_microstructure_and_simulated_time(furnace):
    result = furnace.run(spec(), idempotency_key="ok")
    m = result.measurements
    assert 0.1 < m["gamma_prime_fraction"] < 0.6 and 5 < m["gamma_prime_radius_nm"] < 100
    assert m["grain_size_um"] > 50
    # Ramps at 0.2 K/s from 298 K to 1500 K, 1 h hold, quench, ramp to 1100 K, 4 h hold.
    expected = (1500 - 298) / 0.2 + 3600 + (1100 - 298) / 0.2 + 4 * 3600
    assert result.lab_time_s == pytest.approx(expected)


def test_arc_melter_scatters_and_loses_volatile_aluminium():
    melter = ArcMelter(time_scale=0)
    melts = [melter.run(spec(i), idempotency_key=f"m{i}").measurements for i in range(200)]
    al = np.array([m["x_Al"] for m in melts])
    assert al.mean() < ALLOY["Al"] and al.std() > 0.001
    assert all(abs(sum(v for k, v in m.items() if k.startswith("x_")) - 1.0) < 1e-9 for m in melts)
    assert all(m["mass_loss_pct"] > 0 for m in melts)


def test_hardness_needs_a_heat_treated_specimen_and_xrd_has_a_detection_limit(furnace):
    with pytest.raises(InstrumentRefused, match="needs a heat-treated specimen"):
        HardnessTester(time_scale=0).run(spec(), idempotency_key="h0")
    record = furnace.run(spec(), idempotency_key="ok").measurements
    hardness = HardnessTester(time_scale=0, noise_hv=0.0).run(spec(specimen=record), idempotency_key="h1").measurements
    assert 100 < hardness["hardness_hv"] < 600 and hardness["elongation_pct"] > 0
    xrd = XrdPhaseId(time_scale=0, fraction_noise=0.0, detection_limit=0.02)
    seen = xrd.run(spec(specimen={"gamma_prime_fraction": 0.3, "sigma_fraction": 0.01}), idempotency_key="x1").measurements
    assert seen["xrd_gamma_prime"] == pytest.approx(0.3) and seen["xrd_sigma"] == 0.0 and seen["xrd_brittle_detected"] == 0.0


def test_faults_are_named_and_unknown_ones_refused():
    with pytest.raises(ValueError, match="has no fault \\['furnace_trip'\\]; it can inject: specimen_lost, offline"):
        ArcMelter(faults={"furnace_trip": 0.1})
    with pytest.raises(InstrumentFault, match="specimen lost during e0"):
        ArcMelter(faults={"specimen_lost": 1.0}, time_scale=0).run(spec(), idempotency_key="f")


@pytest.mark.slow  # about 40 s; .ci/run runs it
def test_demo_workflow_campaign_records_results_and_faults(tmp_path, cache):
    twin_options = {"twin": SMALL_TWIN, "cache_path": cache, "limits": LIMITS}
    config = parse_config({
        "name": "mini-demo",
        # inside the small grid with room for the melter's scatter (BO proposes on the bounds)
        "space": {"composition": {"elements": {"Ni": [0.6, 0.9], "Al": [0.02, 0.135], "Co": [0.06, 0.14],
                                               "Cr": [0.06, 0.14]}, "balance": "Ni"}},
        "objective": {"measurement": "hardness_hv", "direction": "maximize"},
        # the BO planner weighs by P(processable) from the phase-boundary agent's CALPHAD classifier
        "planner": {"kind": "bo", "settings": {
            "feasibility": "classifier", "initial_points": 4, "raw_samples": 64, "num_restarts": 2,
            "constraint": {"measurements": ["xrd_brittle_detected"], "at_most": 0.5}}},
        "simulators": [{"kind": "phase_boundary",
                        "settings": {"calphad_calls": 12, "degree": 2, "pool_size": 256, "cache_path": cache}}],
        "process": [step.model_dump() for step in ROUTE],
        "workflow": ["melt", "heat_treat", "hardness", "xrd"],
        "instruments": [
            {"name": "melter", "driver": "arc_melter", "station": "melt", "options": {"time_scale": 0}},
            {"name": "furnace", "driver": "furnace", "station": "heat_treat", "capacity": 2,
             "options": {**twin_options, "faults": {"furnace_trip": 0.25}, "time_scale": 0}},
            {"name": "hardness", "driver": "hardness_tester", "station": "hardness", "options": {"time_scale": 0}},
            {"name": "xrd", "driver": "xrd", "station": "xrd", "options": {"time_scale": 0}},
        ],
        "stop": {"max_experiments": 12, "max_in_flight": 3},
        "ledger": {"synchronous": "normal"},
    })
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = Campaign(config, tmp_path / "c", progress=False).run()
    finally:
        ray.shutdown()
    assert summary.counts["done"] + summary.counts["failed"] == 12 and summary.counts["failed"] >= 1
    with Ledger.in_campaign(tmp_path / "c", readonly=True) as ledger:
        done = ledger.experiments(("done",))
        failed = ledger.experiments(("failed",))
        steps = ledger.documents(ExperimentStep)
        learned = ledger.documents(FeasibilityLearned)
    for record in done:  # every station's measurements arrive in one result
        assert {"x_Al", "grain_size_um", "hardness_hv", "xrd_gamma_prime"} <= set(record.result.measurements)
        route_s = (1500 - 298) / 0.2 + 3600 + (1100 - 298) / 0.2 + 4 * 3600  # holds and ramps
        assert record.result.lab_time_s == pytest.approx(1800 + route_s + 900 + 3600)  # melt, route, HV, XRD
    assert all(r.error_code == "instrument_fault" and "furnace trip" in r.error_message
               and "station heat_treat" in r.error_message for r in failed), [(r.error_code, r.error_message) for r in failed]
    assert len(steps) == 3 * len(done) + len(failed)  # melt committed for the failed, three stations for the done
    assert len(learned) == 1 and learned[0].calphad_calls == 12 and learned[0].service == "simulator.phase_boundary"
    assert {r.planner for r in done + failed} == {"bo"}
    summary_md = write_report(tmp_path / "c").read_text()
    assert "phase_map.png" in summary_md and "best specimen microstructure" in summary_md and "lab time" in summary_md
    assert "infeasible experiments (sum of xrd_brittle_detected not at most 0.5)" in summary_md
    assert (tmp_path / "c" / "report" / "phase_map.png").stat().st_size > 20_000

    # Data outside what the CALPHAD tables cover (an ageing hold at 2200 K): the report says so and draws the rest.
    shutil.copytree(tmp_path / "c", tmp_path / "hot", ignore=shutil.ignore_patterns("report"))
    with Ledger.in_campaign(tmp_path / "hot") as ledger:
        config = ledger.get_meta("config")
        config["process"][-1]["temperature_k"] = 2200.0
        ledger.set_meta(config=config)
    hot = write_report(tmp_path / "hot").read_text()
    assert "_Phase map not drawn: temperatures 2200.0-2200.0 K outside the tabulated" in hot
    assert "best specimen microstructure" in hot

    # Hardness against cost: only alloys that met the constraint make the Pareto front (here the constraint
    # is set so that the softer half is infeasible; a soft, cheap alloy must not sit on the front).
    shutil.copytree(tmp_path / "c", tmp_path / "pareto", ignore=shutil.ignore_patterns("report"))
    hardness = {r.experiment_id: r.result.measurements["hardness_hv"] for r in done}
    cost = {r.experiment_id: r.result.measurements["raw_material_cost_usd_per_kg"] for r in done}
    floor_hv = float(np.median(list(hardness.values())))
    with Ledger.in_campaign(tmp_path / "pareto") as ledger:
        config = ledger.get_meta("config")
        config["planner"]["settings"]["extra_objectives"] = [{"measurement": "raw_material_cost_usd_per_kg",
                                                             "direction": "minimize"}]
        config["planner"]["settings"]["constraint"] = {"measurements": ["hardness_hv"], "at_least": floor_hv}
        ledger.set_meta(config=config)
    pareto = write_report(tmp_path / "pareto").read_text()
    feasible = [e for e in hardness if hardness[e] >= floor_hv]
    front = [e for e in feasible if not any(hardness[o] >= hardness[e] and cost[o] <= cost[e]
                                            and (hardness[o], cost[o]) != (hardness[e], cost[e]) for o in feasible)]
    assert (f"{len(front)} non-dominated of {len(feasible)} feasible experiments "
            f"({len(done) - len(feasible)} infeasible left out)") in pareto
    table = pareto.split("## Pareto front")[1].split("![Pareto front]")[0]
    assert sorted(float(line.split("|")[1]) for line in table.splitlines() if line.startswith("| ") and
                  not line.startswith("| hardness")) == pytest.approx(sorted(hardness[e] for e in front), abs=0.06)
    assert (tmp_path / "pareto" / "report" / "pareto.png").stat().st_size > 10_000


def test_demo_config_is_valid_and_inside_the_twin():
    from pathlib import Path

    from sdl.campaign import load_config
    from sdl.env.twin import TwinConfig

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    grid = TwinConfig().grid
    for element, (low, high) in config.space.composition.elements.items():
        if element in grid:  # the design space sits inside the CALPHAD grid, with room for melt scatter
            assert grid[element].low <= low and high <= grid[element].high - 0.015
    assert config.objective.measurement == "hardness_hv" and config.workflow == ["melt", "heat_treat", "hardness", "xrd"]


def test_a_designed_ageing_hold_is_each_experiments_own_and_inside_every_furnaces_limits():
    """configs/demo_joint.yaml: the ageing hold's temperature and time are parameters of the space; each
    experiment's route carries its own, and a range a furnace cannot run is refused when the file loads."""
    from pathlib import Path

    import yaml

    from sdl.campaign import load_config
    from sdl.settings import ConfigError

    path = Path(__file__).resolve().parents[1] / "configs" / "demo_joint.yaml"
    config = load_config(path)
    point = DesignPoint(parameters={"ageing_temperature_k": 1080.0, "ageing_duration_h": 2.5},
                        composition={"Ni": 0.7, "Al": 0.1, "Co": 0.1, "Cr": 0.1})
    solution, age = config.route_for(point)
    assert solution == config.process[0]  # the solution hold stays as written
    assert (age.operation, age.temperature_k, age.duration_s, age.quench_medium) == ("age", 1080.0, 9000.0, "water")
    raw = yaml.safe_load(path.read_text())

    def refused(change, match):
        broken = yaml.safe_load(yaml.safe_dump(raw))
        change(broken)
        with pytest.raises(ConfigError, match=match) as refusal:
            parse_config(broken)
        assert "\n" not in str(refusal.value)  # one line, naming what is wrong

    def too_hot(c):
        c["space"]["parameters"]["ageing_temperature_k"]["high"] = 1600

    refused(too_hot, r"process \(at the ends of the designed ranges\): step 2 \(age\) at 1600.0 K is above "
                     r"instrument.furnace-1's maximum 1500.0 K")
    refused(lambda c: c["process_design"][0].update(temperature_k="age_k"),
            r"process_design step 2: 'age_k' is not a parameter of the space \(parameters: ageing_")
    refused(lambda c: c["process_design"][0].update(duration="ageing_time"), r"must end in its unit: _s, _min, _h")
    refused(lambda c: c["process_design"][0].update(step=3), r"the process route has 2 steps")
    refused(lambda c: c.pop("process"), r"process_design sets holds of the `process` route")
    # and the campaign's identity includes the design of its holds (a resume cannot change it)
    other = yaml.safe_load(yaml.safe_dump(raw))
    other["process_design"][0].pop("duration")
    assert parse_config(other).design_fingerprint() != config.design_fingerprint()
