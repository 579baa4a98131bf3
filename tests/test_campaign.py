"""Campaigns end to end on one Ray session for the module: Ray agents, an external instrument
process, an agent killed and restarted by Ray, stop rules."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
from click.testing import CliRunner

from sdl.campaign import Campaign, CampaignError
from sdl.cli import main
from sdl.experiment import ExperimentSpec
from sdl.instruments.base import Journal
from sdl.ledger import Ledger
from sdl.ledger.documents import AgentJoined, AgentLost, ExperimentFailed

from conftest import branin_config, done_count, free_port


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_campaign_runs_to_budget_with_every_experiment_recorded(campaign_dir):
    config = branin_config(surrogates=[{"kind": "gp"}], stop={"max_experiments": 10, "max_in_flight": 3})
    summary = Campaign(config, campaign_dir, progress=False).run()
    assert summary.state == "completed" and summary.stop_reason == "budget"
    assert summary.counts == {"planned": 0, "dispatched": 0, "interrupted": 0, "done": 10, "failed": 0}
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        records = ledger.experiments()
        assert {r.instrument for r in records} == {"instrument.a", "instrument.b"}  # both instruments used
        assert all([t[2] for t in ledger.transitions(r.experiment_id)] == ["planned", "dispatched", "done"] for r in records)
        recommendation = ledger.get_meta("recommendation")
        assert recommendation["n_train"] == 10 and "y" in recommendation["true_values"]
        assert ledger.get_meta("state") == "completed"
    # The same directory is not silently reused.
    with pytest.raises(CampaignError, match="already holds a campaign; pass --resume"):
        Campaign(config, campaign_dir, progress=False).run()


def test_target_stops_the_campaign_early(campaign_dir):
    config = branin_config(objective={"measurement": "y", "direction": "minimize", "target": 60.0},
                           stop={"max_experiments": 40, "max_in_flight": 1})
    summary = Campaign(config, campaign_dir, progress=False).run()
    assert summary.stop_reason == "target" and summary.best_value <= 60.0
    assert sum(summary.counts.values()) < 40


def test_faults_are_recorded_as_failed_experiments(campaign_dir):
    config = branin_config(instruments=[{"name": "flaky", "driver": "branin", "options": {"failure_probability": 0.5}}],
                           stop={"max_experiments": 12, "max_in_flight": 1})
    summary = Campaign(config, campaign_dir, progress=False).run()
    assert summary.counts["done"] + summary.counts["failed"] == 12 and summary.counts["failed"] >= 1
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        failed = ledger.experiments(("failed",))
        assert all(r.error_code == "instrument_fault" and "emulated fault" in r.error_message for r in failed)
        assert [d.experiment_id for d in ledger.documents(ExperimentFailed)] == [r.experiment_id for r in failed]


def test_external_instrument_process_is_used_like_a_ray_one(campaign_dir, tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    journal = tmp_path / "lab-pc-journal.sqlite"
    external = subprocess.Popen(
        [sys.executable, "-m", "sdl.cli", "instrument", "serve", "branin", "--bus", address, "--name", "lab-pc",
         "--option", "latency_s=0.02", "--journal", str(journal)],
    )
    try:
        config = branin_config(
            bus={"frontend": address, "join_timeout_s": 60},
            instruments=[{"name": "lab-pc", "driver": "branin", "host": "external"},
                         {"name": "a", "driver": "branin", "options": {"latency_s": 0.05}}],
            stop={"max_experiments": 10, "max_in_flight": 2},
        )
        summary = Campaign(config, campaign_dir, progress=False).run()
        assert summary.counts["done"] == 10
        with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
            on_lab_pc = [r for r in ledger.experiments() if r.instrument == "instrument.lab-pc"]
        assert on_lab_pc, "the external instrument took no experiment"
        assert all(r.result.instrument == "branin" for r in on_lab_pc)
    finally:
        external.send_signal(signal.SIGINT)
        external.wait(timeout=10)
    import sqlite3

    with sqlite3.connect(journal) as db:  # the lab PC's own journal saw exactly those experiments
        assert db.execute("SELECT COUNT(*) FROM executions WHERE status='done'").fetchone()[0] == len(on_lab_pc)


def test_agent_killed_mid_campaign_is_restarted_by_ray_and_rejoins(campaign_dir):
    config = branin_config(
        instruments=[{"name": "a", "driver": "branin", "options": {"latency_s": 0.3}}],
        stop={"max_experiments": 14, "max_in_flight": 1},
    )
    campaign = Campaign(config, campaign_dir, progress=False)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(summary=campaign.run()))
    runner.start()
    deadline = time.monotonic() + 90
    while "instrument.a" not in campaign.actors or done_count(campaign_dir) < 3:
        assert time.monotonic() < deadline, "campaign did not get going"
        time.sleep(0.2)
    actor = campaign.actors["instrument.a"]
    before = ray.get(actor.info.remote())
    os.kill(before["pid"], signal.SIGKILL)  # the driver process dies mid-experiment
    runner.join(timeout=120)
    assert not runner.is_alive()
    summary = outcome["summary"]
    assert summary.counts == {"planned": 0, "dispatched": 0, "interrupted": 0, "done": 14, "failed": 0}
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        agents = [d for d in ledger.documents(AgentJoined, AgentLost) if d.service == "instrument.a"]
        results = [r.result for r in ledger.experiments()]
    # The ledger heard the broker notice the death (its connection closed), and a new process (Ray's
    # restart of the actor) register the service again; Ray may restart it before the old one is dropped.
    lost = [d for d in agents if isinstance(d, AgentLost)]
    assert [(d.worker, d.reason) for d in lost] == [(before["worker"], "connection lost")]
    rejoined = [d.worker for d in agents if isinstance(d, AgentJoined) and d.worker != before["worker"]]
    assert len(rejoined) == 1
    # At most the one experiment on the bench when the process died ran a second time.
    assert sum(r.attempts > 1 for r in results) <= 1


@pytest.mark.parametrize("policy", ["rerun", "hold"])  # a policy of fail takes the path of "hold" then fail
def test_a_command_cut_off_mid_action_is_failed_rerun_or_held_as_its_instrument_says(campaign_dir, policy):
    """The instrument's journal shows the command of e00001 started by a process that died; the
    campaign gets 'interrupted' instead of a second run, records it, and applies on_interrupted."""
    instrument = {"name": "a", "driver": "branin", "on_interrupted": policy, "options": {"latency_s": 0.01}}
    first = Campaign(branin_config(instruments=[instrument], stop={"max_experiments": 1, "max_in_flight": 1}),
                     campaign_dir, progress=False)
    first.run()
    journal = Journal(campaign_dir / "instruments" / "a.sqlite")
    key = f"{first.campaign_id}:e00001"
    journal.begin(key, ExperimentSpec(experiment_id="e00001", campaign_id=first.campaign_id))
    journal.start(key)  # a process of the instrument started it, then died
    journal.close()

    config = branin_config(instruments=[instrument], stop={"max_experiments": 3, "max_in_flight": 1})
    summary = Campaign(config, campaign_dir, resume=True, progress=False).run()
    if policy == "hold":  # the rest is done; the held one waits for a person
        assert (summary.state, summary.stop_reason, summary.counts["interrupted"]) == ("interrupted", "held", 1)
        decided = CliRunner().invoke(main, ["decide", str(campaign_dir), "e00001", "fail", "--by", "bob"])
        assert decided.exit_code == 0, decided.output
        summary = Campaign(config, campaign_dir, resume=True, progress=False).run()
    assert summary.state == "completed" and summary.counts["done"] + summary.counts["failed"] == 3
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        record = {r.experiment_id: r for r in ledger.experiments()}["e00001"]
        interruption, decided = ledger.decisions()["e00001"]
        statuses = [t[2] for t in ledger.transitions("e00001")]
    decision, by = {"fail": ("fail", "policy"), "rerun": ("rerun", "policy"), "hold": ("fail", "bob")}[policy]
    assert (interruption.attempt, interruption.policy, decided.decision, decided.by) == (1, policy, decision, by)
    attempts = {entry.key: entry.attempts for entry in Journal.read(campaign_dir / "instruments" / "a.sqlite")}[key]
    if decision == "fail":
        assert record.status == "failed" and record.error_code == "interrupted" and f"{by} decided: fail" in \
            record.error_message
        assert statuses == ["planned", "dispatched", "interrupted", "failed"] and attempts == 1  # never run again
    else:
        assert record.status == "done" and record.result.attempts == 2
        assert statuses == ["planned", "dispatched", "interrupted", "dispatched", "done"] and attempts == 2
