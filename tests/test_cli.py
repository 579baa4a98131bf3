"""The `sdl` command line: help everywhere, clear config errors, and the quickstart end to end."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from sdl.campaign import load_config
from sdl.cli import main
from sdl.settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [[], ["run"], ["status"], ["decide"], ["report"], ["ledger"], ["ledger", "export"],
                                     ["ledger", "check"], ["ledger", "recover"],
                                     ["instrument"], ["instrument", "serve"], ["instrument", "list"], ["agents"],
                                     ["bench"], ["bench-merge"], ["policy", "train"], ["policy", "route"],
                                     ["causal", "history"], ["causal", "effect"], ["causal", "whatif"], ["generate"],
                                     ["mlip", "active-learn"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_instrument_list_shows_the_registered_drivers():
    result = CliRunner().invoke(main, ["instrument", "list"])
    assert "branin" in result.output and "hartmann6_constrained" in result.output


def test_agents_lists_the_kinds_and_shows_their_settings():
    result = CliRunner().invoke(main, ["agents"])
    assert result.exit_code == 0
    for kind in ("planner.bo", "planner.generative", "planner.process", "surrogate.mlip", "surrogate.generative",
                 "simulator.phase_boundary"):
        assert kind in result.output
    result = CliRunner().invoke(main, ["agents", "planner.bo"])
    assert result.exit_code == 0 and "planner.bo: a planner" in result.output and "feasibility_exponent" in result.output
    result = CliRunner().invoke(main, ["agents", "planner.nope"])
    assert result.exit_code != 0 and "unknown agent kind 'planner.nope'" in result.output


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"planner": {"kind": "gradient"}}, "planner: unknown agent kind 'planner.gradient'; installed: ax, baybe, bo"),
        ({"planner": {"kind": "bo", "settings": {"feasibility": "classifier"}}},
         "planner.bo needs an agent that provides 'feasibility'"),
        ({"planner": {"kind": "bo", "settings": {"feasibility": "measured"}}}, "feasibility 'measured' needs a constraint"),
        ({"planner": {"kind": "bo", "settings": {"constraint": {"measurements": ["c1"]}}}},
         "settings of planner.bo: constraint: a constraint needs at_least, at_most or both"),
        ({"planner": {"kind": "sobol", "settings": {"n": 3}}}, "settings of planner.sobol: n: Extra inputs"),
        ({"simulators": [{"kind": "phase_boundary"}]},
         "simulator.phase_boundary: the phase-boundary agent works on compositions; the space has none"),
        ({"simulators": [{"kind": "test_function", "settings": {"problem": "rosenbrock"}}]},
         "unknown test problem 'rosenbrock'; available: branin"),
        ({"surrogates": [{"kind": "gp"}, {"kind": "gp"}]}, "service names must be unique; repeated: ['surrogate.gp']"),
        ({"surrogates": [{"kind": "bo"}]}, "surrogates.0: unknown agent kind 'surrogate.bo'; installed: generative, gp"),
        ({"surrogates": [{"kind": "planner.bo"}]}, "agent kind 'planner.bo' is a planner, not a surrogate"),
        ({"stop": {"max_experiments": 0}}, "stop.max_experiments: Input should be greater than or equal to 1"),
        ({"instruments": [{"name": "a", "driver": "laser"}]}, "unknown instrument driver 'laser'; installed drivers: arc_melter, ase_calculator, branin, furnace"),
        ({"instruments": [{"name": "a", "driver": "branin", "options": {"noise": 1}}]}, "options of driver 'branin': noise: Extra inputs"),
        ({"instruments": [{"name": "a", "driver": "branin", "host": "cloud"}]}, "host: Input should be 'ray' or 'external'"),
        ({"bus": {"frontend": "localhost:5555"}}, "is not a ZeroMQ endpoint; use tcp://HOST:PORT"),
        ({"bus": {"frontend": "tcp://0.0.0.0:5555"}}, "bus: tcp://0.0.0.0:5555 is reachable from other machines, and the "
                                                      "bus has no keys: make them with `sdl keys new broker`"),
        ({"space": {"parameters": {"x1": {"low": 1, "high": 0}}}}, "need finite low < high"),
        ({"objective": {"direction": "up"}}, "objective.direction: Input should be 'minimize' or 'maximize'"),
        ({"speed": "fast"}, "speed: Extra inputs are not permitted"),
        ({"space": {"composition": {"elements": {"Ni": [0.8, 0.9], "Al": [0.1, 0.2]}}}, "simulators": [],
          "process": [{"operation": "age", "temperature_k": 2200, "duration_s": 60}],
          "instruments": [{"name": "f", "driver": "furnace"}], "workflow": ["measure"]},
         "process: step 1 (age) at 2200.0 K is above instrument.f's maximum 1500.0 K"),
    ],
)
def test_invalid_config_names_the_field_and_the_allowed_values(tmp_path, change, fragment):
    data = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    data.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert fragment in str(e.value)
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code != 0 and fragment in result.output


def test_quickstart_runs_and_reports(tmp_path):
    """The README's main job (the emulated-instrument quickstart), then status, report and export."""
    campaign_dir = tmp_path / "qs"
    run = subprocess.run(
        [sys.executable, "-m", "sdl.cli", "run", str(ROOT / "configs" / "quickstart.yaml"),
         "--campaign-dir", str(campaign_dir), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "completed (budget)" in run.stdout and "best y =" in run.stdout
    report = campaign_dir / "report"
    for png in ("best_so_far.png", "coverage.png", "timeline.png"):
        assert (report / png).stat().st_size > 10_000
    summary = (report / "summary.md").read_text()
    assert "simple regret" in summary and "best measured y" in summary

    runner = CliRunner()
    status = runner.invoke(main, ["status", str(campaign_dir)])
    assert status.exit_code == 0 and "completed (budget)" in status.output
    assert "campaign.stopped completed budget" in status.output.splitlines()[-1]  # the latest documents
    export = runner.invoke(main, ["ledger", "export", str(campaign_dir), "--format", "parquet"])
    assert export.exit_code == 0
    table = pq.read_table(export.output.strip())
    assert table.num_rows == 48 and {"param.x1", "param.x2", "meas.y", "status"} <= set(table.column_names)
    missing = runner.invoke(main, ["status", str(tmp_path)])
    assert missing.exit_code != 0 and "no ledger" in missing.output


def test_a_foreign_or_damaged_ledger_file_is_one_line_and_exit_1_for_every_command(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with sqlite3.connect(foreign / "ledger.sqlite") as db:  # someone else's database where a ledger should be
        db.execute("CREATE TABLE samples (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO samples(name) VALUES ('keep me')")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "ledger.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(300))
    config = ROOT / "configs" / "quickstart.yaml"
    runner = CliRunner()
    for directory, fragment in ((foreign, "an SQLite file of something else (tables samples)"),
                                (damaged, "sdl ledger recover")):
        for command in (["status", str(directory)], ["report", str(directory)], ["ledger", "check", str(directory)],
                        ["ledger", "export", str(directory)],
                        ["run", str(config), "--campaign-dir", str(directory), "--resume"]):
            result = runner.invoke(main, command)
            assert result.exit_code == 1, (command, result.output)
            assert fragment in result.output and "Traceback" not in result.output, (command, result.output)
            assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    with sqlite3.connect(foreign / "ledger.sqlite") as db:  # nothing was written into it
        assert db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall() == [("samples",)]
