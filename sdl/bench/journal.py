"""The bench's journal, ``runs.jsonl`` in its output folder: each run appended (and flushed to disk) as
it ends, so a bench killed after hours loses only the runs in flight, and ``sdl bench --resume`` runs
only what is missing.

A line holds the run and the definitions it was run under (its problem's and planner's specs), so a
resumed bench reuses a run only where the problem and planner are still defined as they were: change a
budget or a setting and those runs are run again. Code changes are not seen; resume a bench only with
the code it was started with. A run that ended in an error is run again."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from sdl.bench.config import BenchConfig, BenchPlannerSpec
from sdl.bench.problems import ProblemSpec
from sdl.bench.runner import RunResult
from sdl.settings import ConfigError

JOURNAL = "runs.jsonl"
RESULTS = "results.json"


def _definition(problem: ProblemSpec, planner: BenchPlannerSpec) -> dict:
    return {"problem": problem.model_dump(mode="json"), "planner": planner.model_dump(mode="json")}


class RunJournal:
    """Appends finished runs to ``out/runs.jsonl``; :attr:`finished` are the earlier runs a resumed bench
    keeps (those of this config's problems, planners and seeds, defined as now, without an error)."""

    def __init__(self, config: BenchConfig, out: Path, *, resume: bool) -> None:
        self.path = out / JOURNAL
        self.finished: list[RunResult] = []
        self.unreadable_lines = 0
        earlier = self._read() if self.path.exists() else []
        if not resume:
            if earlier and not self._completed(out):
                raise ConfigError(f"{out} holds {len(earlier)} finished runs of a bench that did not finish "
                                  f"({self.path.name}); add --resume to keep them, or delete {self.path} to start over")
            self.path.unlink(missing_ok=True)
        else:
            self.finished = self._reusable(config, earlier)
        out.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def _completed(self, out: Path) -> bool:
        """Whether the bench that wrote the journal got as far as its results (written after its last run)."""
        results = out / RESULTS
        return results.exists() and results.stat().st_mtime >= self.path.stat().st_mtime

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
    def _reusable(config: BenchConfig, records: list[dict]) -> list[RunResult]:
        seeds = range(config.first_seed, config.first_seed + config.seeds)
        defined = {(p.name, q.name): _definition(p, q) for p in config.problems for q in config.planners}
        kept: dict[tuple[str, str, int], RunResult] = {}
        for record in records:
            run = RunResult(**record["run"])
            key = (run.problem, run.planner)
            if run.error is None and run.seed in seeds and defined.get(key) == record.get("definition"):
                kept[(*key, run.seed)] = run  # the last of repeated runs
        return list(kept.values())

    def record(self, run: RunResult, problem: ProblemSpec, planner: BenchPlannerSpec) -> None:
        self._file.write(json.dumps({"definition": _definition(problem, planner), "run": asdict(run)}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
