"""kill -9 a running `sdl run`, resume it, and check that every experiment ran exactly once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from click.testing import CliRunner

from sdl.cli import main
from sdl.instruments.base import Journal
from sdl.ledger import Ledger, LedgerError
from sdl.ledger.documents import (
    AgentPlaced,
    CampaignResumed,
    CampaignStarted,
    ExperimentDecided,
    ExperimentInterrupted,
    ExperimentStep,
)

from conftest import done_count

CONFIG = {
    "name": "crash",
    "seed": 11,
    "space": {"parameters": {"x1": {"low": -5, "high": 10}, "x2": {"low": 0, "high": 15}}},
    "instruments": [
        {"name": "a", "driver": "branin", "options": {"latency_s": 0.25, "noise_std": 0.1}},
        {"name": "b", "driver": "branin", "options": {"latency_s": 0.4, "noise_std": 0.1}},
    ],
    "stop": {"max_experiments": 24, "max_in_flight": 2},
    "ledger": {"synchronous": "normal"},
}


def sdl_run(*args):
    return subprocess.Popen([sys.executable, "-m", "sdl.cli", "run", *args, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def start_campaign(tmp_path, config):
    """Write ``config`` and start `sdl run` on it; returns (config path, campaign directory, process)."""
    config_path = tmp_path / f"{config['name']}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    campaign_dir = tmp_path / "campaign"
    return config_path, campaign_dir, sdl_run(str(config_path), "--campaign-dir", str(campaign_dir))


def wait_until(run, condition, timeout_s=120.0):
    """Poll ``condition()`` while `sdl run` goes on; fail if it ends first or makes no progress."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert run.poll() is None, f"sdl run ended early:\n{run.stdout.read()}"
        assert time.monotonic() < deadline, "campaign made no progress"
        time.sleep(0.05)


def journal_rows(campaign_dir):
    """key -> (status, attempts) over the journals of the campaign's instruments."""
    return {entry.key: (entry.status, entry.attempts)
            for path in sorted((campaign_dir / "instruments").glob("*.sqlite")) for entry in Journal.read(path)}


def test_kill_9_mid_campaign_then_resume_runs_each_experiment_exactly_once(tmp_path):
    """kill -9 mid-campaign; then the disk loses the tail of the ledger: `sdl ledger recover` brings back
    every journalled result from the backup and the journals, and the resumed campaign runs each
    experiment exactly once."""
    config_path, campaign_dir, first = start_campaign(
        tmp_path, {**CONFIG, "ledger": {"synchronous": "normal", "backup_every": 6}})
    wait_until(first, lambda: done_count(campaign_dir) >= 8)  # a backup was taken at 6; the next is due at 12
    kill_and_wait_for_its_processes(first)  # no cleanup, no finally blocks; then the journals are final
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        at_kill = {r.experiment_id: r.status for r in ledger.experiments()}
        assert ledger.get_meta("state") == "running"  # it never got to say otherwise
    assert 8 <= sum(s == "done" for s in at_kill.values()) < 24

    ledger_file = campaign_dir / "ledger.sqlite"  # the disk loses the end of the ledger and its WAL
    ledger_file.write_bytes(ledger_file.read_bytes()[: ledger_file.stat().st_size // 3])
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger_file}{suffix}").unlink(missing_ok=True)
    check = sdl_cli("ledger", "check", str(campaign_dir))
    assert check.returncode == 1 and "sdl ledger recover" in check.stderr and "Traceback" not in check.stderr
    with Ledger(campaign_dir / "ledger.backup.sqlite", readonly=True) as backup:
        in_backup = backup.counts()["done"]
    recover = sdl_cli("ledger", "recover", str(campaign_dir))
    assert recover.returncode == 0, recover.stderr
    assert "rebuilt from the backup" in recover.stdout and list(campaign_dir.glob("ledger.sqlite.damaged-*"))
    done_in_journals = {key for key, (status, _) in journal_rows(campaign_dir).items() if status == "done"}
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        recovered = {r.idempotency_key for r in ledger.experiments(("done",))}
    assert in_backup < len(done_in_journals)  # the backup alone would have lost results
    assert recovered == done_in_journals  # every journalled result is back
    assert sdl_cli("ledger", "check", str(campaign_dir)).returncode == 0

    second = sdl_run(str(config_path), "--campaign-dir", str(campaign_dir), "--resume")
    output, _ = second.communicate(timeout=240)
    assert second.returncode == 0, output
    assert "completed (budget)" in output

    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        records = ledger.experiments()
        assert ledger.counts() == {"planned": 0, "dispatched": 0, "interrupted": 0, "done": 24, "failed": 0}
        assert [r.seq for r in records] == list(range(24))
        for r in records:
            finishes = [t for t in ledger.transitions(r.experiment_id) if t[2] in ("done", "failed")]
            assert len(finishes) == 1, f"{r.experiment_id} finished {len(finishes)} times"
            if at_kill.get(r.experiment_id) == "done":  # recorded before the crash: untouched since
                assert r.dispatch_count == 1
        assert [type(d) for d in ledger.documents(CampaignStarted, CampaignResumed)] == [CampaignStarted, CampaignResumed]
    # Instrument side: one journal entry per experiment, all done; only experiments that were in
    # flight at the kill may have needed a second attempt.
    journal = journal_rows(campaign_dir)
    assert len(journal) == 24 and all(status == "done" for status, _ in journal.values())
    for record in records:
        status, attempts = journal[record.idempotency_key]
        assert attempts == 1 or at_kill.get(record.experiment_id) == "dispatched"
        assert record.result.attempts == attempts


@pytest.mark.slow  # about 20 s; .ci/run runs it
def test_ctrl_c_stops_cleanly_with_in_flight_work_recorded(tmp_path):
    _, campaign_dir, run = start_campaign(tmp_path, {**CONFIG, "name": "interrupt"})
    wait_until(run, lambda: done_count(campaign_dir) >= 4)
    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 130, output
    assert "interrupted" in output and "--resume" in output
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        counts = ledger.counts()
        assert counts["dispatched"] == 0 and counts["planned"] == 0  # in-flight experiments finished and recorded
        assert 4 <= counts["done"] < 24
        assert ledger.get_meta("state") == "interrupted"


@pytest.mark.slow  # about 40 s; .ci/run runs it
def test_kill_9_mid_workflow_resumes_from_the_first_uncommitted_station(tmp_path):
    """Two stations per specimen: a resumed campaign does not send a specimen back to a station
    whose result was already committed."""
    config = {**CONFIG, "name": "workflow", "workflow": ["first", "second"],
              "instruments": [{"name": "one", "driver": "branin", "station": "first", "options": {"latency_s": 0.2}},
                              {"name": "two", "driver": "branin", "station": "second", "options": {"latency_s": 0.3}}],
              "stop": {"max_experiments": 16, "max_in_flight": 3}}
    config_path, campaign_dir, first = start_campaign(tmp_path, config)
    wait_until(first, lambda: done_count(campaign_dir) >= 5)
    kill_and_wait_for_its_processes(first)
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        committed_first = {d.experiment_id for d in ledger.documents(ExperimentStep) if d.station == "first"}
        unfinished = {r.experiment_id for r in ledger.experiments(("planned", "dispatched"))}
    second = sdl_run(str(config_path), "--campaign-dir", str(campaign_dir), "--resume")
    output, _ = second.communicate(timeout=240)
    assert second.returncode == 0, output
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        assert ledger.counts()["done"] == 16
        steps = ledger.documents(ExperimentStep)
        records = ledger.experiments()
    # Each specimen's first station is committed exactly once, also across the kill.
    assert sorted(d.experiment_id for d in steps) == sorted(r.experiment_id for r in records)
    first_station = {e.key: e.attempts for e in Journal.read(campaign_dir / "instruments" / "one.sqlite")}
    for experiment_id in committed_first & unfinished:  # waiting for station two at the kill
        key = next(r.idempotency_key for r in records if r.experiment_id == experiment_id)
        assert first_station[f"{key}/first"] == 1
    for record in records:  # one result per specimen, adding up both stations' time (0.2 s + 0.3 s)
        assert record.result.lab_time_s >= 0.45 and record.result.instrument == "branin"


def sdl_cli(*args):
    return subprocess.run([sys.executable, "-m", "sdl.cli", *args], capture_output=True, text=True, timeout=60, check=False)


def test_kill_9_mid_measurement_of_a_destructive_instrument_holds_it_and_leaves_no_process(tmp_path):
    """The furnace's process dies mid-action with the driver: on resume the command is not run again
    but held, the operator's decision releases it, and nothing the campaign started outlives the kill."""
    config = {**CONFIG, "name": "furnace",
              "instruments": [{"name": "furnace", "driver": "branin", "destructive": True,
                               "options": {"latency_s": 1.0}}],
              "stop": {"max_experiments": 5, "max_in_flight": 1}}
    config_path, campaign_dir, first = start_campaign(tmp_path, config)
    wait_until(first, lambda: done_count(campaign_dir) >= 1  # and the second experiment is on the furnace
               and any(status == "running" for status, _ in journal_rows(campaign_dir).values()))
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        furnace_pid = next(d.pid for d in ledger.documents(AgentPlaced) if d.service == "instrument.furnace")
    os.kill(furnace_pid, signal.SIGKILL)  # the furnace's controller dies mid-action, and the driver with it
    # No orphans: every process the campaign started (Ray's node, its agents, workers) ends within 10 s.
    kill_and_wait_for_its_processes(first)
    cut_off = next(key for key, (status, _) in journal_rows(campaign_dir).items() if status == "running")
    experiment_id = cut_off.rsplit(":", 1)[1]

    # Resumed: the cut-off command is held, not run again, while the campaign goes on with the rest.
    second = sdl_run(str(config_path), "--campaign-dir", str(campaign_dir), "--resume")
    wait_until(second, lambda: ledger_status(campaign_dir, experiment_id) == "interrupted")
    assert journal_rows(campaign_dir)[cut_off] == ("interrupted", 1)  # held: not run again
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        interruption = ledger.documents(ExperimentInterrupted)[0]
        assert (interruption.experiment_id, interruption.attempt, interruption.policy) == (experiment_id, 1, "hold")
    runner = CliRunner()
    status = runner.invoke(main, ["status", str(campaign_dir)])
    assert f"held       {experiment_id} at instrument.furnace (attempt 1 cut off)" in status.output

    # The operator decides through the CLI while the campaign runs; it applies the decision within a second.
    refused = runner.invoke(main, ["decide", str(campaign_dir), "e00000", "rerun", "--by", "alice"])
    assert refused.exit_code == 1 and "e00000 is done, not interrupted" in refused.output
    assert "Traceback" not in refused.output
    decided = runner.invoke(main, ["decide", str(campaign_dir), experiment_id, "rerun", "--by", "alice",
                                   "--note", "looked fine"])
    assert decided.exit_code == 0, decided.output
    output, _ = second.communicate(timeout=240)
    if "interrupted (held)" in output:  # it had finished the rest before the decision landed: resume again
        output, _ = sdl_run(str(config_path), "--campaign-dir", str(campaign_dir), "--resume").communicate(timeout=240)
    assert "completed (budget)" in output, output
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        assert ledger.counts()["done"] == 5 and ledger.counts()["interrupted"] == 0
        assert [(d.experiment_id, d.by, d.note) for d in ledger.documents(ExperimentDecided)] == [
            (experiment_id, "alice", "looked fine")]
        records = ledger.experiments()
    # No command ran twice on its own: every journal row has one attempt but the held one, which ran
    # once more because alice decided so.
    journal = journal_rows(campaign_dir)
    assert {key: value for key, value in journal.items()} == {
        r.idempotency_key: ("done", 2 if r.experiment_id == experiment_id else 1) for r in records}


def ledger_status(campaign_dir, experiment_id):
    try:
        with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
            return {r.experiment_id: r.status for r in ledger.experiments()}.get(experiment_id)
    except LedgerError:
        return None


def kill_and_wait_for_its_processes(driver, within_s=10.0):
    """kill -9 the driver; every process it started must be gone ``within_s`` (no orphans, no stale ports)."""
    started = {(p.pid, p.create_time()) for p in psutil.Process(driver.pid).children(recursive=True)}
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + within_s
    while alive := [pid for pid, created in started if _created(pid) == created]:
        assert time.monotonic() < deadline, f"still alive {within_s} s after kill -9: {[_name(pid) for pid in alive]}"
        time.sleep(0.2)


def _created(pid):
    """The process's start time, or None if it is gone (a zombie is gone: it holds no memory, file or port)."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:
        return None


def _name(pid):
    try:
        process = psutil.Process(pid)
        return f"{' '.join(process.cmdline())[-100:]} ({process.status()}, parent {process.ppid()})"
    except psutil.Error:
        return str(pid)
