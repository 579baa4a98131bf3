"""The bench's journal, ``runs.jsonl`` in its output folder: each run appended (and flushed to disk) as
it ends, so a bench killed after hours loses only the runs in flight, and ``sdl bench --resume`` runs
only what is missing.

A line holds the run and the definitions it was run under (its problem's and planner's specs), so a
resumed bench reuses a run only where the problem and planner are still defined as they were: change a
budget or a setting and those runs are run again. Neither code changes nor changes inside the files a
spec names (a database, a checkpoint) are seen; resume a bench only with what it was started with. A run
whose planner failed is a result and is kept; a run whose Ray worker was lost is run again."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from sdl.bench.config import BenchConfig, BenchPlannerSpec
from sdl.bench.problems import ProblemSpec
from sdl.bench.runner import LOST_RUN, RunResult
from sdl.settings import ConfigError

JOURNAL = "runs.jsonl"
RESULTS = "results.json"


def _definition(problem: ProblemSpec, planner: BenchPlannerSpec) -> dict:
    return {"problem": problem.model_dump(mode="json"), "planner": planner.model_dump(mode="json")}


class RunJournal:
    """Reads ``out/runs.jsonl`` when made: :attr:`finished` are the earlier runs a resumed bench keeps
    (those of this config's problems, planners and seeds, defined as now, whose worker was not lost).
    Without ``resume`` it refuses a journal holding runs the folder's results do not (a bench that did
    not finish, or finished narrower), so hours of runs are never dropped unasked. :meth:`open` starts
    appending (a new bench: an empty journal), :meth:`record` appends a run."""

    def __init__(self, config: BenchConfig, out: Path, *, resume: bool) -> None:
        self.path, self.resume = out / JOURNAL, resume
        self.finished: list[RunResult] = []
        self.unreadable_lines = 0
        self._file = None
        earlier = self._read() if self.path.exists() else []
        if resume:
            self.finished = self._reusable(config, earlier)
        elif missing := len(self._keys(earlier) - self._results_keys(out / RESULTS)):
            raise ConfigError(f"{out} holds {missing} journalled runs that its {RESULTS} does not (a bench that did "
                              f"not finish); add --resume to keep them, or delete {self.path} to start over")

    def _read(self) -> list[dict]:
        lines = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                RunResult(**record["run"])
                lines.append(record)
            except (json.JSONDecodeError, KeyError, TypeError):
                self.unreadable_lines += 1  # a line cut short by the kill that ended the bench
        return lines

    @staticmethod
    def _keys(records: list[dict]) -> set[tuple[str, str, int]]:
        return {(r["run"]["problem"], r["run"]["planner"], r["run"]["seed"]) for r in records}

    @staticmethod
    def _results_keys(path: Path) -> set[tuple[str, str, int]]:
        try:
            return {(r["problem"], r["planner"], r["seed"]) for r in json.loads(path.read_text())["runs"]}
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    @staticmethod
    def _reusable(config: BenchConfig, records: list[dict]) -> list[RunResult]:
        seeds = range(config.first_seed, config.first_seed + config.seeds)
        defined = {(p.name, q.name): _definition(p, q) for p in config.problems for q in config.planners}
        kept: dict[tuple[str, str, int], RunResult] = {}
        for record in records:
            run = RunResult(**record["run"])
            key = (run.problem, run.planner)
            lost = run.error is not None and run.error.startswith(LOST_RUN)
            if not lost and run.seed in seeds and defined.get(key) == record.get("definition"):
                kept[(*key, run.seed)] = run  # the last of repeated runs
        return list(kept.values())

    def open(self) -> None:
        """Start appending: after the kept runs (resume), or to an empty journal."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            self.path.unlink(missing_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        if self._file.tell() > 0:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._file.write("\n")  # end the line the kill cut short, or the next run joins it

    def record(self, run: RunResult, problem: ProblemSpec, planner: BenchPlannerSpec) -> None:
        self._file.write(json.dumps({"definition": _definition(problem, planner), "run": asdict(run)}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
