"""Rebuild a damaged or truncated ledger from its last backup and the instruments' journals.

The journals are a second record of every command's outcome (each instrument commits it before it
replies), so whatever the ledger lost since its last backup is still on the instrument side:
``recover`` starts from the ledger if it is intact, else from ``ledger.backup.sqlite`` (the damaged
file is moved aside, never deleted), re-plans experiments that were planned after the backup from
the command each journal kept, and finishes every experiment whose journal holds an outcome for
every station (done) or a failure or refusal at one (failed). An experiment whose command the journals
show cut off, still running or not yet started is recorded dispatched to the instrument that holds
it, with the stations it finished, and left to ``--resume``, which reconciles it there as always.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from sdl.campaign.config import BUS_FILENAME, journal_path
from sdl.campaign.scheduler import Flight
from sdl.experiment import ExperimentResult, ExperimentSpec
from sdl.instruments.base import Journal, JournalEntry
from sdl.ledger import BACKUP_FILENAME, LEDGER_FILENAME, ExperimentRecord, Ledger, PlannedExperiment
from sdl.ledger.documents import ExperimentStep, LedgerRecovered
from sdl.ledger.store import check_ledger
from sdl.wire import ErrorCode


class RecoveryError(RuntimeError):
    """Nothing to recover from (no intact ledger and no intact backup)."""


@dataclass
class Recovery:
    source: str
    journals: list[str]
    results: int = 0
    failures: int = 0
    replanned: int = 0
    left_for_resume: list[str] = field(default_factory=list)
    damaged_copy: Path | None = None


def recover(campaign_dir: str | Path, journals: dict[str, Path] | None = None) -> Recovery:
    """Recover the ledger of ``campaign_dir``; ``journals`` adds instrument name -> journal file for
    instruments whose journal is not in the campaign directory (external lab PCs)."""
    campaign_dir = Path(campaign_dir)
    _refuse_if_running(campaign_dir)
    ledger_path = campaign_dir / LEDGER_FILENAME
    problems = check_ledger(ledger_path)[0] if ledger_path.exists() else [f"{ledger_path} is missing"]
    damaged_copy = None
    if problems:
        backup = campaign_dir / BACKUP_FILENAME
        if not backup.exists():
            raise RecoveryError(f"{ledger_path} cannot be used ({problems[0]}) and there is no backup {backup}; "
                                "set ledger.backup_every for future campaigns")
        backup_problems = check_ledger(backup)[0]
        if backup_problems:
            raise RecoveryError(f"{ledger_path} cannot be used ({problems[0]}) and neither can its backup "
                                f"({backup_problems[0]})")
        if ledger_path.exists():
            damaged_copy = ledger_path.with_name(f"{LEDGER_FILENAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):  # the WAL belongs to the damaged file, not to the backup
                part = Path(f"{ledger_path}{suffix}")
                if part.exists():
                    part.rename(f"{damaged_copy}{suffix}")
        shutil.copyfile(backup, ledger_path)
    with Ledger(ledger_path) as ledger:
        config = ledger.get_meta("config") or {}
        campaign_id = ledger.get_meta("campaign_id")
        workflow = config.get("workflow") or ["measure"]
        names = [i["name"] for i in config.get("instruments", [])]
        paths = {name: path for name in names if (path := journal_path(campaign_dir, name)).exists()}
        paths.update(journals or {})
        recovery = Recovery(source="backup" if problems else "ledger", journals=[str(p) for p in paths.values()],
                            damaged_copy=damaged_copy)
        commands = _journaled(paths, campaign_id, workflow)
        records = {r.experiment_id: r for r in ledger.experiments()}
        _replan(ledger, campaign_id, commands, records, recovery)
        records = {r.experiment_id: r for r in ledger.experiments()}
        committed_steps = {(d.experiment_id, d.step) for d in ledger.documents(ExperimentStep)}
        for experiment_id, stations in sorted(commands.items()):
            if experiment_id in records:
                _finish(ledger, records[experiment_id], stations, workflow, recovery, committed_steps)
        ledger.record(LedgerRecovered(source=recovery.source, journals=recovery.journals,
                                      results=recovery.results + recovery.failures, replanned=recovery.replanned,
                                      damaged_copy=str(damaged_copy) if damaged_copy else None))
    return recovery


def _refuse_if_running(campaign_dir: Path) -> None:
    """A campaign still writing its ledger must be stopped first (bus.json names the process that ran it)."""
    try:
        pid = json.loads((campaign_dir / BUS_FILENAME).read_text())["pid"]
        process = psutil.Process(pid)
        running = pid != os.getpid() and "sdl" in " ".join(process.cmdline())
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return
    if running:
        raise RecoveryError(f"the campaign in {campaign_dir} is still running (process {pid}); stop it first")


def _journaled(paths: dict[str, Path], campaign_id: str,
               workflow: list[str]) -> dict[str, dict[str, tuple[str, JournalEntry]]]:
    """experiment id -> station -> (instrument, journal entry), for this campaign's commands."""
    commands: dict[str, dict[str, tuple[str, JournalEntry]]] = {}
    for name, path in paths.items():
        try:
            entries = Journal.read(path)
        except ValueError as e:
            raise RecoveryError(str(e)) from None
        for entry in entries:
            if not entry.key.startswith(f"{campaign_id}:"):
                continue  # another campaign's command on the same instrument
            experiment_id, _, station = entry.key.removeprefix(f"{campaign_id}:").partition("/")
            commands.setdefault(experiment_id, {})[station or workflow[0]] = (name, entry)
    return commands


def _replan(ledger: Ledger, campaign_id: str, commands: dict[str, dict[str, tuple[str, JournalEntry]]],
            records: dict[str, ExperimentRecord], recovery: Recovery) -> None:
    """Experiments planned after the backup, as the journals received them."""
    missing = []
    for experiment_id, stations in sorted(commands.items()):
        if experiment_id in records:
            continue
        command = next((e.command for _, e in stations.values() if e.command), None)
        if command is None:
            continue  # a journal of an earlier sdl keeps no commands: nothing to re-plan from
        spec = ExperimentSpec.model_validate(command)
        missing.append(PlannedExperiment(experiment_id=experiment_id, point=spec.point, process=tuple(spec.process),
                                         planner="recovered", idempotency_key=f"{campaign_id}:{experiment_id}"))
    if missing:
        ledger.plan(missing)
        recovery.replanned = len(missing)


def _finish(ledger: Ledger, record: ExperimentRecord, stations: dict[str, tuple[str, JournalEntry]], workflow: list[str],
            recovery: Recovery, committed_steps: set[tuple[str, int]]) -> None:
    """Bring one experiment up to what the journals know: finished, or dispatched to the instrument that
    holds its command (so that --resume reconciles it there and never sends it to another one)."""
    if record.status in ("done", "failed", "interrupted"):
        return
    results: list[ExperimentResult] = []
    for step, station in enumerate(workflow):
        instrument, entry = stations.get(station, (None, None))
        if entry is not None and entry.status in ("failed", "refused"):
            code = ErrorCode.INSTRUMENT_FAULT if entry.status == "failed" else ErrorCode.INVALID_PAYLOAD
            message = entry.outcome["message"] if len(workflow) == 1 else f"at station {station}: {entry.outcome['message']}"
            ledger.record_failure(record.experiment_id, code, message, station=station)
            recovery.failures += 1
            return
        if entry is None or entry.status != "done":
            break
        results.append(ExperimentResult.model_validate(entry.outcome))
    else:
        if record.status != "dispatched":
            ledger.mark_dispatched(record.experiment_id, f"instrument.{stations[workflow[-1]][0]}")
        ledger.record_result(record.experiment_id, Flight(record, results=results[:-1]).combined(results[-1]))
        recovery.results += 1
        return
    # Stopped at station `step`: its command is in flight at `instrument` (or was never sent).
    holder = instrument or (stations[workflow[step - 1]][0] if step else None)
    if holder is not None:
        ledger.mark_dispatched(record.experiment_id, f"instrument.{holder}")
    for done_step, result in enumerate(results):
        if (record.experiment_id, done_step) not in committed_steps:
            ledger.record_step(record.experiment_id, step=done_step, station=workflow[done_step],
                               instrument=f"instrument.{stations[workflow[done_step]][0]}", result=result)
    recovery.left_for_resume.append(record.experiment_id)
