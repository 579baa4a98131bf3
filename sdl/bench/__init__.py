"""``sdl bench CONFIG``: planners x problems x seeds, closed loop, in parallel as Ray tasks.

Problems are in :mod:`.problems`, the YAML in :mod:`.config`, the runs in :mod:`.runner`, their
journal (what a killed bench resumes from) in :mod:`.journal`, and what they are turned into
(``results.json``, ``table.md``, ``regret.png``) in :mod:`.outputs`.
Benchmarks print figures; tests check correctness.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sdl.bench.config import BenchConfig, BenchPlannerSpec, load_bench_config, make_bench_planner
from sdl.bench.journal import RunJournal
from sdl.bench.outputs import merge_results, write_outputs
from sdl.bench.problems import BenchProblem, FormulaProblem, ProblemSpec, TestFunctionProblem, TwinProblem, make_problem
from sdl.bench.runner import RunResult, closed_loop, reference, run_one, run_tasks


def run_bench(config: BenchConfig, *, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run the whole bench and write its outputs in ``config.out`` (default runs/bench/<name>), each run
    journalled there as it ends; ``resume`` keeps the runs an earlier, unfinished bench journalled."""
    out = config.out or Path("runs") / "bench" / config.name
    journal = RunJournal(config, out, resume=resume)  # refuses to drop an unfinished bench's runs: before any work
    if resume:
        skipped = f", {journal.unreadable_lines} unreadable lines skipped" if journal.unreadable_lines else ""
        print(f"bench {config.name}: {len(journal.finished)} finished runs kept from {journal.path}{skipped}",
              file=sys.stderr, flush=True)
    problem_specs = {p.name: p for p in config.problems}
    planner_specs = {p.name: p for p in config.planners}
    problems: dict[str, BenchProblem] = {}
    try:
        for spec in config.problems:
            problems[spec.name] = make_problem(spec)  # built once: the twin tabulates
        references = {name: reference(problem) for name, problem in problems.items()}
        journal.open()
        results = run_tasks(config, progress=progress, finished=journal.finished,
                            on_result=lambda r: journal.record(r, problem_specs[r.problem], planner_specs[r.planner]))
        return write_outputs(config, problems, results, references, out)
    finally:
        journal.close()
        for problem in problems.values():
            problem.close()


__all__ = ["BenchConfig", "BenchPlannerSpec", "BenchProblem", "FormulaProblem", "ProblemSpec", "RunJournal", "RunResult",
           "TestFunctionProblem", "TwinProblem", "closed_loop", "load_bench_config", "make_bench_planner",
           "make_problem", "merge_results", "reference", "run_bench", "run_one", "run_tasks", "write_outputs"]
