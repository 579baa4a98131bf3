"""kill -9 torture of the campaign and its instruments (prints figures; not a test).

One campaign, three emulated instruments of one station, each with its own answer to a command
cut off mid-action: ``furnace`` is ``destructive: true`` (held for an operator), ``press`` fails it,
``oven`` reruns it. The driver (``sdl run``) is killed with SIGKILL at a random moment while
commands are running, ``--kills`` times; after each kill the script waits for every process the
campaign started to end, plays the operator (``sdl decide``: rerun or fail, alternately, for each
held experiment) and resumes. A last resume runs the campaign to its budget.

Figures, from the ledger and the instruments' journals at the end:
- lost: a journalled outcome (done or failed) that the ledger does not hold, or an experiment
  recorded finished at some kill that is not finished at the end (target 0);
- duplicated: an experiment finished more than once in the ledger (target 0);
- re-executed: a command started more often than 1 + the reruns decided for it (target 0; for the
  held instrument every rerun must be an operator's);
- orphans: processes of a killed driver still alive 10 s after the kill (target 0).

    python bench/kill_torture.py [--kills 20] [--experiments 180] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from sdl.instruments.base import Journal, JournalEntry
from sdl.ledger import Ledger, LedgerError
from sdl.ledger.documents import ExperimentDecided

POLICIES = {"furnace": {"destructive": True}, "press": {"on_interrupted": "fail"}, "oven": {}}


def config(experiments: int, seed: int) -> dict:
    return {
        "name": "torture",
        "seed": seed,
        "space": {"parameters": {"x1": {"low": -5, "high": 10}, "x2": {"low": 0, "high": 15}}},
        "instruments": [{"name": name, "driver": "branin", "options": {"latency_s": 0.6, "noise_std": 0.1},
                         **policy} for name, policy in POLICIES.items()],
        "stop": {"max_experiments": experiments, "max_in_flight": 3},
        "ledger": {"synchronous": "normal", "backup_every": 10},
    }


def journal_entries(campaign_dir: Path) -> list[tuple[str, JournalEntry]]:
    """(instrument, entry) for every command the campaign's instruments journalled."""
    return [(path.stem, entry) for path in sorted((campaign_dir / "instruments").glob("*.sqlite"))
            for entry in Journal.read(path)]


def journal_rows(campaign_dir: Path) -> dict[str, tuple[str, str, int]]:
    """key -> (instrument, status, attempts)."""
    return {entry.key: (instrument, entry.status, entry.attempts) for instrument, entry in journal_entries(campaign_dir)}


def sdl(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sdl.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


def running_commands(campaign_dir: Path, since_unix_s: float) -> int:
    """Commands the instruments started after ``since_unix_s`` and have not finished (rows left
    running by an earlier, killed run do not count: they are only marked interrupted when asked)."""
    return sum(entry.status == "running" and entry.started_at_unix_s > since_unix_s
               for _, entry in journal_entries(campaign_dir))


def ledger_state(campaign_dir: Path) -> dict[str, str]:
    try:
        with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
            return {r.experiment_id: r.status for r in ledger.experiments()}
    except LedgerError:
        return {}


def kill(driver: subprocess.Popen) -> int:
    """SIGKILL the driver; the number of its processes still alive 10 s later."""
    started = {(p.pid, p.create_time()) for p in psutil.Process(driver.pid).children(recursive=True)}
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        alive = [pid for pid, created in started if _created(pid) == created]
        if not alive:
            return 0
        time.sleep(0.2)
    for pid, _ in started:  # leave a clean machine for the next round
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    return len(alive)


def _created(pid: int) -> float | None:
    """The process's start time, or None if it is gone (a zombie is gone: it holds no memory, file or port)."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:
        return None


def decide_held(campaign_dir: Path, turn: int) -> collections.Counter:
    decided: collections.Counter = collections.Counter()
    for experiment_id, status in ledger_state(campaign_dir).items():
        if status != "interrupted":
            continue
        decision = "rerun" if (turn + len(decided)) % 2 == 0 else "fail"
        result = subprocess.run([sys.executable, "-m", "sdl.cli", "decide", str(campaign_dir), experiment_id,
                                 decision, "--by", "torture-operator"], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            decided[decision] += 1
    return decided


def torture(kills: int, experiments: int, seed: int) -> None:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="sdl-torture-"))
    config_path = work / "torture.yaml"
    config_path.write_text(yaml.safe_dump(config(experiments, seed)))
    campaign_dir = work / "campaign"
    finished_at_kills: dict[str, str] = {}
    orphans = cut_off = kills_done = mid_measurement = 0
    decisions: collections.Counter = collections.Counter()
    started = time.monotonic()
    resume: list[str] = []
    for k in range(kills):
        launched = time.time()
        driver = sdl("run", str(config_path), "--campaign-dir", str(campaign_dir), "--no-progress", *resume)
        resume = ["--resume"]
        deadline = time.monotonic() + 120
        while (running_commands(campaign_dir, launched) == 0 and driver.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.05)
        if driver.poll() is not None:
            print(f"  the campaign ended before kill {k + 1}: {driver.stdout.read().strip().splitlines()[-3:]}")
            break
        time.sleep(rng.uniform(0.0, 2.5))  # somewhere in the middle of the measurements
        running = running_commands(campaign_dir, launched)
        orphans += kill(driver)
        kills_done += 1
        mid_measurement += running > 0
        cut_off += running
        state = ledger_state(campaign_dir)
        finished_at_kills.update({e: s for e, s in state.items() if s in ("done", "failed")})
        decisions += decide_held(campaign_dir, k)
        print(f"  kill {k + 1:>2}: {running} commands running; ledger "
              f"{collections.Counter(state.values()).most_common()}", flush=True)
    for turn in range(20):  # to the end, deciding what is held
        final = sdl("run", str(config_path), "--campaign-dir", str(campaign_dir), "--no-progress", *resume)
        output, _ = final.communicate(timeout=1800)
        if "(held)" not in output:
            break
        decisions += decide_held(campaign_dir, turn)
    summary = [line for line in output.splitlines() if line.startswith("campaign ")]
    print(f"last run: {summary[0] if summary else output[-500:]}")

    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        records = {r.idempotency_key: r for r in ledger.experiments()}
        finishes = collections.Counter(t[0] for t in ledger.transitions() if t[2] in ("done", "failed"))
        reruns = collections.Counter(d.experiment_id for d in ledger.documents(ExperimentDecided)
                                     if d.decision == "rerun")
        operator = collections.Counter(d.decision for d in ledger.documents(ExperimentDecided) if d.by != "policy")
        policy = collections.Counter(d.decision for d in ledger.documents(ExperimentDecided) if d.by == "policy")
        counts = ledger.counts()
    journal = journal_rows(campaign_dir)
    lost = [key for key, (_, status, _) in journal.items()
            if status in ("done", "failed") and (key not in records or records[key].status != status)]
    lost += [e for e, s in finished_at_kills.items()
             if not any(r.experiment_id == e and r.status == s for r in records.values())]
    duplicated = [e for e, n in finishes.items() if n > 1]
    by_instrument: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for key, (instrument, status, attempts) in journal.items():
        experiment_id = records[key].experiment_id
        allowed = 1 + reruns[experiment_id]
        by_instrument[instrument]["commands"] += 1
        by_instrument[instrument]["re-executed"] += max(0, attempts - allowed)
        by_instrument[instrument]["reruns decided"] += reruns[experiment_id]
    print(f"\n{kills_done} kills ({mid_measurement} with commands running, {cut_off} commands in all) in "
          f"{time.monotonic() - started:.0f} s")
    print(f"ledger at the end: {counts}")
    print(f"decisions: operator {dict(operator)}, policy {dict(policy)}")
    for instrument, figures in sorted(by_instrument.items()):
        policy_name = POLICIES[instrument].get("on_interrupted") or ("hold" if POLICIES[instrument] else "rerun")
        print(f"  {instrument:<8} ({policy_name:<5}) " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    print(f"lost {len(lost)} / duplicated {len(duplicated)} / re-executed "
          f"{sum(f['re-executed'] for f in by_instrument.values())} (targets 0 / 0 / 0); orphans {orphans}")
    print(f"campaign directory: {campaign_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--experiments", type=int, default=180)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torture(args.kills, args.experiments, args.seed)


if __name__ == "__main__":
    main()
