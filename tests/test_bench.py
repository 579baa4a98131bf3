"""`sdl bench`: problems from YAML formulas and entry points, clear errors, the peers' adapters, and
an end-to-end run on a tiny budget (Ray tasks, table, regret curves)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from sdl.bench import (
    BenchPlannerSpec,
    BenchProblem,
    FormulaProblem,
    ProblemSpec,
    TestFunctionProblem,
    load_bench_config,
    make_problem,
    reference,
    run_one,
)
from sdl.experiment import DesignPoint
from sdl.objective import ConstraintConfig, ObjectiveConfig
from sdl.settings import ConfigError
from sdl.space import SearchSpace

RING = {"name": "ring", "budget": 6, "parameters": {"a": {"low": -1, "high": 1}, "b": {"low": -1, "high": 1}},
        "objective": "(a - 0.6)**2 + (b + 0.5)**2", "constraints": ["0.5 - a**2 - b**2"]}


def test_formula_problem_evaluates_and_knows_its_constrained_optimum():
    problem = make_problem(ProblemSpec(**RING))
    assert isinstance(problem, FormulaProblem)
    rows = problem.evaluate([DesignPoint(parameters={"a": 0.6, "b": -0.5}), DesignPoint(parameters={"a": 0, "b": 0})])
    assert rows[0]["y"] == pytest.approx(0.0) and rows[0]["c1"] == pytest.approx(0.5 - 0.36 - 0.25)
    assert rows[1]["c1"] == pytest.approx(0.5)
    ref = reference(problem)
    # the unconstrained optimum (0.6, -0.5) is infeasible; the constrained one lies on the circle r^2 = 0.5
    r = np.hypot(0.6, 0.5)
    assert ref["best"] == pytest.approx((r - np.sqrt(0.5)) ** 2, abs=1e-4)
    assert 0.3 < ref["feasible_share"] < 0.5  # pi * 0.5 / 4


class _PeakInComposition(BenchProblem):
    """Hardness peaking at Ni-10Al-5Cr (a smooth stand-in for the twin), feasible below 12 % Al."""

    space = SearchSpace.model_validate({"composition": {"elements": {"Ni": [0.6, 1.0], "Al": [0, 0.2], "Cr": [0, 0.2]},
                                                        "balance": "Ni"}})
    objective = ObjectiveConfig(measurement="y", direction="maximize")
    constraint = ConstraintConfig(measurements=["slack"], at_least=0.0)
    reference_points = 10

    def evaluate(self, points):
        return [{"y": 100 - 1e5 * ((p.composition["Al"] - 0.1) ** 2 + (p.composition["Cr"] - 0.05) ** 2),
                 "slack": 0.12 - p.composition["Al"]} for p in points]


def test_where_a_problem_asks_the_references_best_is_searched_beyond_its_random_sample():
    """A composition space gets no SLSQP polish; a problem whose sample is sparse (the joint twin) asks for a local
    search from the sample's best points, which must stay feasible and only improve on the sample."""
    sampled, searched = _PeakInComposition(), _PeakInComposition()
    searched.reference_search_evaluations = 360
    before, after = reference(sampled), reference(searched)
    assert before["median"] == after["median"] and before["feasible_share"] == after["feasible_share"]
    assert before["best"] < 99.0 < after["best"] <= 100.0  # the optimum (100) is feasible (Al 0.10 < 0.12)


def test_bad_problems_and_configs_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match=r"uses \['c'\], not among parameters"):
        make_problem(ProblemSpec(**{**RING, "objective": "a + c"}))
    with pytest.raises(ConfigError, match="cannot read objective"):
        make_problem(ProblemSpec(**{**RING, "objective": "a +* b"}))
    with pytest.raises(ConfigError, match="unknown problem 'nosuch'.*available: branin"):
        make_problem(ProblemSpec(name="nosuch"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"problems": [{"name": "branin"}], "planners": [{"name": "x", "kind": "gradient"}]}))
    with pytest.raises(ConfigError, match="unknown agent kind 'planner.gradient'; installed: ax, baybe, bo"):
        load_bench_config(bad)
    bad.write_text(yaml.safe_dump({"problems": [{"name": "branin"}],
                                   "planners": [{"name": "x", "kind": "bo", "settings": {"num_restarts": 0}}]}))
    with pytest.raises(ConfigError, match="planner x on problem branin: settings of x: num_restarts: Input should be"):
        load_bench_config(bad)
    # a planner that cannot work on a problem is a result that says why
    threads = torch.get_num_threads()
    result = run_one(ProblemSpec(name="branin", budget=2), BenchPlannerSpec(name="x", kind="generative"), seed=0)
    assert "the generative planner works on compositions; the space has none" in result.error
    assert torch.get_num_threads() == threads  # run in-process, it leaves the caller's thread count as it was


def test_bench_builds_only_the_problems_it_is_asked_to_run(tmp_path):
    """Building a problem can cost minutes (a twin variant tabulates CALPHAD): `--problems` builds only those."""
    from click.testing import CliRunner

    from sdl.cli import main

    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({"problems": [{"name": "branin"}, {**RING, "name": "broken", "objective": "a +* b"}],
                                      "planners": [{"name": "random", "kind": "random"}]}))
    everything = CliRunner().invoke(main, ["bench", str(config)])
    assert everything.exit_code != 0 and "problem broken: cannot read objective" in everything.output
    # the broken problem is not built; the run stops at the next check, before any Ray task
    chosen = CliRunner().invoke(main, ["bench", str(config), "--problems", "branin", "--planners", "nosuch"])
    assert chosen.exit_code != 0 and "--planners: ['nosuch'] not in the config" in chosen.output
    assert "cannot read objective" not in chosen.output


@pytest.mark.slow  # about 35 s for both peers; .ci/run runs it
@pytest.mark.parametrize("kind", ["ax", "baybe"])
def test_peer_adapters_plan_inside_the_space(kind):
    pytest.importorskip({"ax": "ax", "baybe": "baybe"}[kind])
    result = run_one(ProblemSpec(name="hartmann6_constrained", budget=5),
                     BenchPlannerSpec(name=kind, kind=kind, constrained=True, settings={"initial_points": 3}), seed=0)
    assert result.error is None, result.error
    assert len(result.values) == 5 and len(result.feasible) == 5


def test_twin_problem_measures_hardness_and_processability():
    pytest.importorskip("pycalphad")
    problem = make_problem(ProblemSpec(name="twin", budget=4))
    lean = DesignPoint(composition={"Ni": 0.82, "Al": 0.05, "Co": 0.05, "Cr": 0.08})
    rich = DesignPoint(composition={"Ni": 0.70, "Al": 0.14, "Co": 0.02, "Cr": 0.14})
    values, feasible = problem.truth([lean, rich])
    assert feasible.tolist() == [True, False]
    assert 30 < values[0] < values[1] < 500  # more Al, more gamma-prime, harder (but not solutionisable)
    measured = problem.measure([lean], np.random.default_rng(0))[0]
    assert measured["hardness_hv"] != values[0] and abs(measured["hardness_hv"] - values[0]) < 30


def test_a_calphad_planner_gets_each_twins_heat_treatment_and_falls_back_elsewhere():
    """feasibility 'calphad' on a twin variant: the variant's own solution and ageing temperatures (the
    route, not the truth's database); on a problem without a heat treatment: the measured constraint."""
    from sdl.bench.config import BenchPlannerSpec, planner_settings

    spec = BenchPlannerSpec(name="bo_calphad", kind="bo", constrained=True,
                            settings={"feasibility": "calphad", "calphad": {"points_per_axis": 5}})
    variant = make_problem(ProblemSpec.model_validate({"name": "twin", "budget": 4, "phase_boundary": {
        "target": {"solution_temperature_k": 1350, "ageing_temperature_k": 1100}}}))
    try:
        settings = planner_settings(spec, variant)
    finally:
        variant.close()
    assert settings.feasibility == "calphad" and settings.constraint.measurements == ["processable"]
    assert (settings.calphad.solution_temperature_k, settings.calphad.ageing_temperature_k) == (1350, 1100)
    assert settings.calphad.points_per_axis == 5
    elsewhere = planner_settings(spec, make_problem(ProblemSpec(name="hartmann6_constrained")))
    assert elsewhere.feasibility == "measured" and elsewhere.calphad is None
    # the physics guess needs the heat treatment too, the chance constraint a P(feasible)
    # (and sampling the constraint jointly with the objective, a measured constraint's GP)
    physics = spec.model_copy(update={"settings": {**spec.settings, "initial_design": "physics",
                                                   "feasibility_floor": 0.9, "feasibility_acquisition": "joint"}})
    constrained = planner_settings(physics, make_problem(ProblemSpec(name="hartmann6_constrained")))
    assert constrained.initial_design == "sobol" and constrained.feasibility_floor == 0.9
    assert constrained.feasibility_acquisition == "joint"
    unconstrained = planner_settings(physics, make_problem(ProblemSpec(name="hartmann6")))
    assert unconstrained.feasibility == "none" and unconstrained.feasibility_floor == 0.0
    assert unconstrained.feasibility_acquisition == "weighted"


@pytest.mark.slow  # about 45 s of CALPHAD for two databases; .ci/run runs it
def test_a_truth_that_disagrees_with_the_planners_database_is_kept_from_them():
    """Issue 19's held-out truth: the twin reads a shifted copy of the database (its gamma-prime solvus
    ~45 K higher), so an alloy just inside the database's boundary fails; the planners' settings (and
    the database they name) are the same as on the unperturbed twin."""
    from sdl.bench.config import BenchPlannerSpec, make_bench_planner, planner_settings
    from sdl.env.calphad import DEFAULT_DATABASE, resolve_database

    spec = BenchPlannerSpec(name="bo_calphad", kind="bo", constrained=True,
                            settings={"feasibility": "calphad", "calphad": {"points_per_axis": 3}})
    honest = make_problem(ProblemSpec(name="twin"))
    off = make_problem(ProblemSpec.model_validate(
        {"name": "twin_truth_off", "twin": {"truth_shifts_j_per_mol": {"G(L12_FCC,NI:AL:VA;0)": -300}}}))
    try:
        assert off.name == "twin_truth_off" and off.has_feasibility_model
        assert off.twin.equilibria.database_path != resolve_database(DEFAULT_DATABASE)
        assert planner_settings(spec, off) == planner_settings(spec, honest)
        assert planner_settings(spec, off).calphad.database == DEFAULT_DATABASE
        # the planner's physics inputs: the same table of CALPHAD features, value for value
        tables = [make_bench_planner(spec, problem, seed=0).calphad_features.values for problem in (honest, off)]
        assert torch.equal(tables[0], tables[1])
        near = DesignPoint(composition={"Ni": 0.68, "Al": 0.12, "Co": 0.10, "Cr": 0.10})
        assert honest.truth([near])[1].tolist() == [True] and off.truth([near])[1].tolist() == [False]
    finally:
        honest.close()
        off.close()


def test_joint_composition_and_process_design_problem():
    """Ageing temperature and time designed beside the composition: each specimen its own ageing hold,
    feasibility judged at its own ageing temperature, ranges inside the furnace's limits, and a
    CALPHAD planner told which parameter is the ageing temperature."""
    from sdl.bench.config import BenchPlannerSpec, planner_settings

    problem = make_problem(ProblemSpec.model_validate({"name": "twin_joint", "twin": {"process_design": {}}}))
    try:
        assert sorted(problem.space.parameters) == ["ageing_duration_h", "ageing_temperature_k"]
        assert not problem.has_feasibility_model  # the CALPHAD classifier knows one ageing temperature only
        composition = {"Ni": 0.68, "Al": 0.12, "Co": 0.10, "Cr": 0.10}
        points = [DesignPoint(parameters={"ageing_temperature_k": t, "ageing_duration_h": h}, composition=composition)
                  for t, h in ((1000.0, 0.5), (1050.0, 8.0), (1150.0, 24.0))]
        values, feasible = problem.truth(points)
        assert len(set(np.round(values, 6))) == 3 and values[1] > values[0]  # the hold matters: peak-aged beats short
        routes = problem.routes(points)
        assert [r[-1].duration_s for r in routes] == [1800.0, 28800.0, 86400.0]
        spec = BenchPlannerSpec(name="bo_calphad", kind="bo", constrained=True, settings={"feasibility": "calphad"})
        settings = planner_settings(spec, problem)
        assert settings.calphad.ageing_temperature_parameter == "ageing_temperature_k"
        assert settings.calphad.ageing_temperature_k is None
        measured = planner_settings(BenchPlannerSpec(name="bo_c", kind="bo", constrained=True), problem)
        assert measured.feasibility == "measured"
    finally:
        problem.close()
    with pytest.raises(ValueError, match="above the furnace's maximum 1200.0 K"):
        ProblemSpec.model_validate({"name": "j", "twin": {"process_design": {
            "ageing_temperature_k": [1000, 1250], "limits": {"max_temperature_k": 1200}}}})


def test_policy_route_problem_processes_each_alloy_as_the_process_planner_would():
    """The alternative to designing the ageing hold: the planner designs the composition, the shipped RL
    policy plans each alloy's route (or the textbook route where that promises more); alloys with
    routes of different lengths are measured together; the two process options exclude each other."""
    from sdl.agents.process_policy import SHIPPED_POLICY, ProcessPolicy, choose_route

    problem = make_problem(ProblemSpec.model_validate({"name": "twin_policy", "twin": {"process_policy": "shipped"}}))
    try:
        assert not problem.space.parameters  # the composition only
        policy = ProcessPolicy(SHIPPED_POLICY)
        compositions = [{"Ni": 0.68, "Al": 0.12, "Co": 0.10, "Cr": 0.10}, {"Ni": 0.85, "Al": 0.05, "Co": 0.05, "Cr": 0.05},
                        {"Ni": 0.75, "Al": 0.10, "Co": 0.0, "Cr": 0.15}]
        points = [DesignPoint(composition=c) for c in compositions]
        routes = problem.routes(points)
        assert len({tuple(s.operation for s in r) for r in routes}) > 1  # not one shared sequence of holds
        for composition, route in zip(compositions, routes):
            steps, _, policy_return = policy.route(composition)
            book, _, book_return = policy.textbook(composition)
            assert route == (steps if choose_route(steps, policy_return, book_return) == "policy" else book)
        values, _ = problem.truth(points)
        one_by_one = [problem.truth([p])[0][0] for p in points]
        np.testing.assert_allclose(values, one_by_one, rtol=1e-12)
        assert problem.twin.properties([compositions[0]], [routes[0]]).hardness_hv[0] == pytest.approx(values[0])
    finally:
        problem.close()
    with pytest.raises(ValueError, match="either process_design .* or process_policy"):
        ProblemSpec.model_validate({"name": "j", "twin": {"process_design": {}, "process_policy": "shipped"}})


def test_bench_runs_end_to_end_as_ray_tasks(tmp_path):
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "seeds": 2,
        "problems": [{"name": "branin", "budget": 6}, RING],
        "planners": [{"name": "random", "kind": "random"},
                     {"name": "bo", "kind": "bo", "settings": {"initial_points": 3, "raw_samples": 32,
                                                               "num_restarts": 2}},
                     {"name": "bo_constrained", "kind": "bo", "constrained": True,
                      "settings": {"initial_points": 3, "raw_samples": 32, "num_restarts": 2}}],
    }))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "sdl.cli", "bench", str(config), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| bo_constrained |" in done.stdout and "## ring" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 2 * 3 * 2
    assert all(r["error"] is None for r in results["runs"]), [r["error"] for r in results["runs"]]
    assert all(len(r["values"]) == (6 if r["problem"] == "branin" else RING["budget"]) for r in results["runs"])
    # a seed fixes a run: the two random runs differ, and each is reproducible
    random_runs = [r for r in results["runs"] if r["planner"] == "random" and r["problem"] == "branin"]
    assert random_runs[0]["values"] != random_runs[1]["values"]
    again = run_one(ProblemSpec(name="branin", budget=6), BenchPlannerSpec(name="random", kind="random"),
                    seed=random_runs[0]["seed"])
    assert again.values == pytest.approx(random_runs[0]["values"])
    assert (out / "regret.png").stat().st_size > 10_000
    assert "experiments to 95 %" in (out / "table.md").read_text()
    # each run journalled as it ended, and logged (no progress bar)
    assert len((out / "runs.jsonl").read_text().splitlines()) == 12
    assert "bench tiny: 12/12 " in done.stderr


def test_the_journal_keeps_finished_runs_defined_as_now_for_a_resumed_bench(tmp_path):
    """A resumed bench reuses a journalled run only where its problem and planner are defined as now and
    its seed is among the bench's; a planner's failure is kept (a result), a lost worker's run is not; a
    line cut short by a kill is skipped and does not swallow the next run; without --resume a journal
    holding runs the folder's results do not is refused, one whose runs all made it into them restarts."""
    from sdl.bench import RunJournal, RunResult
    from sdl.bench.config import BenchConfig
    from sdl.bench.runner import LOST_RUN

    def config(budget: int) -> BenchConfig:
        return BenchConfig(name="t", seeds=2, problems=[{"name": "branin", "budget": budget}],
                           planners=[{"name": "random", "kind": "random"}, {"name": "bo", "kind": "bo"}])

    def results(*runs: RunResult) -> None:
        (tmp_path / "results.json").write_text(json.dumps({"runs": [vars(r) for r in runs]}))

    now, before = config(4), config(6)
    journal = RunJournal(now, tmp_path, resume=False)
    journal.open()
    branin, random_planner, bo = now.problems[0], *now.planners
    run = RunResult("branin", "random", 0, values=[3.0, 2.0, 1.0, 0.5], feasible=[True] * 4)
    failed = RunResult("branin", "bo", 0, error="ValueError: boom")
    journal.record(run, branin, random_planner)
    journal.record(failed, branin, bo)
    journal.record(RunResult("branin", "bo", 1, values=[1.0] * 6, feasible=[True] * 6), before.problems[0], bo)
    journal.record(RunResult("branin", "random", 5, values=[1.0] * 4, feasible=[True] * 4), branin, random_planner)
    journal.record(RunResult("branin", "random", 1, error=f"{LOST_RUN}WorkerCrashedError"), branin, random_planner)
    journal.close()
    with (tmp_path / "runs.jsonl").open("a") as f:
        f.write('{"definition": {"problem": {"na')  # the kill came mid-line
    with pytest.raises(ConfigError, match="holds 5 journalled runs that its results.json does not.*--resume"):
        RunJournal(now, tmp_path, resume=False)
    resumed = RunJournal(now, tmp_path, resume=True)
    assert resumed.finished == [run, failed] and resumed.unreadable_lines == 1
    rerun = RunResult("branin", "random", 1, values=[2.0] * 4, feasible=[True] * 4)
    resumed.open()
    resumed.record(rerun, branin, random_planner)
    resumed.close()
    again = RunJournal(now, tmp_path, resume=True)
    assert again.finished == [run, failed, rerun] and again.unreadable_lines == 1
    results(run, failed)  # a narrower bench finished here: the other runs are still only in the journal
    with pytest.raises(ConfigError, match="holds 3 journalled runs"):
        RunJournal(now, tmp_path, resume=False)
    results(*[RunResult(**json.loads(line)["run"]) for line in (tmp_path / "runs.jsonl").read_text().splitlines()
              if line.endswith("}")])
    fresh = RunJournal(now, tmp_path, resume=False)  # every run made it into the results: a new bench may start
    fresh.open()
    fresh.close()
    assert (tmp_path / "runs.jsonl").read_text() == ""


def test_paired_comparison_counts_seed_by_seed_and_bounds_the_median_difference():
    """Wins/ties/losses against a baseline planner on the same seeds, a never-reaching run counted as
    budget + 1, and a bootstrap CI that contains the median difference; a baseline that is not among the
    planners is refused."""
    from sdl.bench.config import BenchConfig
    from sdl.bench.outputs import format_table, summarise
    from sdl.bench.runner import RunResult

    problem = make_problem(ProblemSpec(name="branin", budget=10))
    best = -0.397887  # branin is minimised: 95 % of the best means within 5 % of the range to the optimum
    ref = {"best": best, "median": 50.0, "feasible_share": 1.0, "success_share": 0.01}

    def run(planner: str, seed: int, hit_at: int | None) -> RunResult:
        values = [50.0] * 10
        if hit_at is not None:
            values[hit_at - 1:] = [best] * (11 - hit_at)
        return RunResult("branin", planner, seed, values=values, feasible=[True] * 10, planner_seconds=[0.1] * 10)

    mine = [4, 5, 6, 9, None, 3]   # experiments to success per seed (None: never)
    theirs = [6, 5, 8, 7, 9, None]
    results = [run("bo", s, h) for s, h in enumerate(mine)] + [run("ax", s, h) for s, h in enumerate(theirs)]
    config = BenchConfig(name="t", seeds=6, problems=[{"name": "branin", "budget": 10}],
                         planners=[{"name": "bo", "kind": "bo"}, {"name": "ax", "kind": "random"}], baseline="ax")
    summary = summarise(config, {"branin": problem}, results, {"branin": ref})
    paired = summary["branin"]["bo"]["paired"]
    differences = [-2, 0, -2, 2, 2, -8]  # the never-reaching runs count 11
    assert (paired["wins"], paired["ties"], paired["losses"]) == (3, 1, 2)
    assert paired["median_difference"] == float(np.median(differences)) == -1.0
    low, high = paired["ci95"]
    assert min(differences) <= low <= -1.0 <= high <= max(differences)
    assert "paired" not in summary["branin"]["ax"]
    table = format_table(config, summary, {"branin": ref})
    assert "Seed by seed against ax" in table and "| bo | 6 | 3 / 1 / 2 |" in table
    # merged results: a planner run on other problems only is left out of this problem's table, not "failed"
    more = config.model_copy(update={"planners": [*config.planners, BenchPlannerSpec(name="other", kind="random")]})
    table = format_table(more, summarise(more, {"branin": problem}, results, {"branin": ref}), {"branin": ref})
    assert "other" not in table and "failed" not in table
    with pytest.raises(ValueError, match="baseline 'peer' is not one of the planners"):
        BenchConfig(name="t", problems=[{"name": "branin"}], planners=[{"name": "bo", "kind": "bo"}], baseline="peer")


@pytest.mark.slow  # a bench killed and resumed (~60 s); .ci/run runs it
@pytest.mark.timeout(900)  # three bench starts, on cores that may be busy
def test_a_killed_bench_resumes_with_the_runs_it_had_finished(tmp_path):
    """kill -9 of the whole bench (driver, Ray and its workers) mid-run; the same command refuses to
    overwrite its journal, and with --resume runs only what was missing."""
    import os
    import signal
    import time

    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny", "seeds": 6, "problems": [{"name": "branin", "budget": 12}],
                                      "planners": [{"name": "bo", "kind": "bo", "settings": {
                                          "initial_points": 3, "raw_samples": 32, "num_restarts": 2}}]}))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sdl.cli", "bench", str(config), "--out", str(out), "--no-progress"]
    bench = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / "runs.jsonl"
    deadline = time.monotonic() + 240
    try:
        while not (journal.exists() and len(journal.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
            assert bench.poll() is None, "the bench ended before it could be killed"
            time.sleep(0.2)
    finally:  # the whole bench, Ray included, whatever happened above
        os.killpg(bench.pid, signal.SIGKILL)
        bench.wait()
    journalled = {json.loads(line)["run"]["seed"]: json.loads(line)["run"] for line in journal.read_text().splitlines()
                  if line.endswith("}")}
    assert 2 <= len(journalled) < 6 and not (out / "results.json").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "add --resume" in again.stderr
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(journalled)} finished runs kept" in resumed.stderr
    assert f"/{6 - len(journalled)} " in resumed.stderr  # only the missing runs ran
    runs = {r["seed"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert sorted(runs) == list(range(6)) and all(r["error"] is None for r in runs.values())
    for seed, run in journalled.items():  # kept as journalled (a rerun would have other timings)
        assert runs[seed] == run


@pytest.mark.slow  # two bench runs and a merge, each starting Ray (~40 s); .ci/run runs it
def test_more_seeds_later_merge_into_one_table(tmp_path):
    """--first-seed adds seeds to an earlier run; bench-merge makes one table of both."""
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny", "seeds": 2, "problems": [{"name": "branin", "budget": 4}],
                                      "planners": [{"name": "random", "kind": "random"}]}))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "sdl.cli", "bench", str(config), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    extra = tmp_path / "extra"
    done = subprocess.run([sys.executable, "-m", "sdl.cli", "bench", str(config), "--out", str(extra), "--no-progress",
                           "--first-seed", "2", "--seeds", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["seed"] for r in json.loads((extra / "results.json").read_text())["runs"]] == [2]
    merged = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "sdl.cli", "bench-merge", str(out / "results.json"),
                           str(extra / "results.json"), "--out", str(merged)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((merged / "results.json").read_text())["runs"]
    assert sorted(r["seed"] for r in runs) == [0, 1, 2]
    assert "median over 3 seeds" in (merged / "table.md").read_text()
    assert (merged / "regret.png").stat().st_size > 10_000
    # results of a differently defined problem are refused, not averaged
    other = json.loads((extra / "results.json").read_text())
    other["references"]["branin"]["best"] += 1.0
    (tmp_path / "other.json").write_text(json.dumps(other))
    done = subprocess.run([sys.executable, "-m", "sdl.cli", "bench-merge", str(out / "results.json"),
                           str(tmp_path / "other.json"), "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert done.returncode != 0 and "cannot be merged" in done.stderr


def test_entry_point_problems_are_found(tmp_path, monkeypatch):
    """A package contributes a problem through the `sdl.bench_problems` entry-point group."""
    dist = tmp_path / "extra_problems-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-problems\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sdl.bench_problems]\nbranin_again = extra_problems:make\n")
    (tmp_path / "extra_problems.py").write_text(
        "from sdl.bench import TestFunctionProblem\n\ndef make():\n    return TestFunctionProblem('branin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    problem = make_problem(ProblemSpec(name="branin_again"))
    assert isinstance(problem, TestFunctionProblem) and problem.space.dimension == 2
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({"problems": [{"name": "branin_again"}], "planners": [{"name": "r", "kind": "random"}]}))
    assert load_bench_config(config).problems[0].name == "branin_again"  # the loader builds it to check


def test_a_peer_answer_just_outside_the_bounded_simplex_is_projected_back_inside():
    """A peer meets its sum constraints to a tolerance: with the balance element 1e-7 above its bound, scaling
    the free fractions back pushed Pt, already at its own upper bound, past it (BayBE on the 6-element box)."""
    import math

    from sdl.agents.base import AgentContext
    from sdl.agents.peer_planners import PeerPlanner, PeerSettings
    from sdl.space import SearchSpace

    space = SearchSpace.model_validate({"composition": {"elements": {e: [0.05, 0.35] for e in
                                                                     ["Cu", "Ni", "Pd", "Ag", "Au", "Pt"]},
                                                        "balance": "Cu"}})
    planner = PeerPlanner(PeerSettings(), AgentContext(space=space))
    point = planner._to_point({"Ni": 0.05, "Pd": 0.05, "Ag": 0.05, "Au": 0.1499999, "Pt": 0.35})
    space.check(point)  # raised "Pt=0.35000005... outside [0.05, 0.35]" before
    assert math.isclose(sum(point.composition.root.values()), 1.0, abs_tol=1e-12)
    assert point.composition["Pt"] == pytest.approx(0.35) and point.composition["Cu"] == pytest.approx(0.35)
