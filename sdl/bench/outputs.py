"""Bench outputs: the summary table (experiments to 95 % of the best, final simple regret, infeasible
share, planner time), ``results.json``, ``table.md`` and the regret curves, and the merging of
several runs' results into one."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from sdl.bench.config import BenchConfig
from sdl.bench.problems import BenchProblem, make_problem, reached
from sdl.bench.runner import RunResult
from sdl.settings import validate


def write_outputs(config: BenchConfig, problems: dict[str, BenchProblem], results: list[RunResult],
                  references: dict, out: Path) -> dict[str, Any]:
    """Summarise the runs and write results.json, table.md and regret.png in ``out``."""
    summary = summarise(config, problems, results, references)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"config": config.model_dump(mode="json"), "references": references, "summary": summary,
         "runs": [asdict(r) for r in results]}, indent=1))
    (out / "table.md").write_text(format_table(config, summary, references))
    plot_regret(config, problems, results, references, out / "regret.png")
    return {"out": str(out), "summary": summary, "references": references}


def _experiments_to_success(problem: BenchProblem, run: RunResult, ref: dict[str, float]) -> float:
    ok = reached(problem, np.asarray(run.values), ref["best"], ref["median"]) & np.asarray(run.feasible)
    hits = np.flatnonzero(ok)
    return float(hits[0] + 1) if len(hits) else math.inf


def best_so_far_regret(problem_direction: str, run: RunResult, best: float) -> np.ndarray:
    """Simple regret after each experiment: gap from the best feasible value found so far."""
    sign = 1.0 if problem_direction == "maximize" else -1.0
    values = np.where(np.asarray(run.feasible), sign * np.asarray(run.values), -np.inf)
    so_far = np.maximum.accumulate(values)
    return np.where(np.isfinite(so_far), sign * best - so_far, np.nan)


def summarise(config: BenchConfig, problems: dict[str, BenchProblem], results: list[RunResult],
              references: dict) -> dict[str, dict[str, dict]]:
    summary: dict[str, dict[str, dict]] = {}
    for spec in config.problems:
        problem = problems[spec.name]
        ref = references[spec.name]
        summary[spec.name] = {}
        hits_by_seed: dict[str, dict[int, float]] = {}  # planner -> seed -> experiments to 95 %
        for planner in config.planners:
            runs = [r for r in results if r.problem == spec.name and r.planner == planner.name]
            ok = [r for r in runs if r.error is None]
            row: dict[str, Any] = {"runs": len(runs), "errors": [r.error for r in runs if r.error]}
            if ok:
                hits = np.array([_experiments_to_success(problem, r, ref) for r in ok])
                hits_by_seed[planner.name] = {r.seed: h for r, h in zip(ok, hits.tolist())}
                regret = np.array([best_so_far_regret(problem.objective.direction, r, ref["best"])[-1] for r in ok])
                row.update({
                    "experiments_to_95": float(np.median(hits)),
                    "reached_95_share": float(np.isfinite(hits).mean()),
                    "final_regret_median": float(np.nanmedian(regret)) if np.isfinite(regret).any() else None,
                    "final_regret_q25_q75": np.nanpercentile(regret, [25, 75]).tolist() if np.isfinite(regret).any() else None,
                    "infeasible_share": float(np.median([1 - np.mean(r.feasible) for r in ok])),
                    "planner_s_per_iter": float(np.median([np.median(r.planner_seconds) for r in ok])),
                    "planner_s_at_end": float(np.median([np.mean(r.planner_seconds[-5:]) for r in ok])),
                })
            summary[spec.name][planner.name] = row
        if config.baseline is not None:
            theirs = hits_by_seed.get(config.baseline, {})
            for name, row in summary[spec.name].items():
                if name != config.baseline:
                    row["paired"] = paired_comparison(hits_by_seed.get(name, {}), theirs, config.baseline,
                                                      budget=spec.budget)
    return summary


def paired_comparison(mine: dict[int, float], theirs: dict[int, float], baseline: str, *,
                      budget: int) -> dict[str, Any] | None:
    """Experiments to 95 % of the best (seed -> count, inf where never), seed by seed, against the
    baseline planner's run of the same seed:
    wins (fewer), ties, losses, and the median of the paired differences with a 95 % bootstrap CI
    (scipy, percentile method: the differences are integers with ties, where BCa breaks down). A run
    that never reaches the target counts as budget + 1, a bound in its favour, so a difference with one
    side censored is at least that large in truth."""
    from scipy.stats import bootstrap

    seeds = sorted(mine.keys() & theirs.keys())
    if not seeds:
        return None
    mine = {s: min(mine[s], budget + 1.0) for s in seeds}
    theirs = {s: min(theirs[s], budget + 1.0) for s in seeds}
    difference = np.array([mine[s] - theirs[s] for s in seeds])
    out: dict[str, Any] = {"baseline": baseline, "seeds": len(seeds), "wins": int((difference < 0).sum()),
                           "ties": int((difference == 0).sum()), "losses": int((difference > 0).sum()),
                           "median_difference": float(np.median(difference)), "ci95": None,
                           "ratio_of_medians": float(np.median([mine[s] for s in seeds])
                                                     / np.median([theirs[s] for s in seeds]))}
    if len(seeds) >= 3 and np.ptp(difference) > 0:
        ci = bootstrap((difference,), np.median, confidence_level=0.95, method="percentile", n_resamples=9999,
                       random_state=np.random.default_rng(0)).confidence_interval
        out["ci95"] = [float(ci.low), float(ci.high)]
    elif len(seeds) >= 3:
        out["ci95"] = [float(difference[0])] * 2  # every seed the same difference
    return out


def merge_results(result_files: list[Path], out: Path, *, baseline: str | None = None) -> dict[str, Any]:
    """Several ``results.json`` of one bench (e.g. seeds 0-9 today, 10-19 tomorrow, or planners run
    apart) as one: the union of their runs, summarised and plotted again in ``out``. Refused when
    they disagree on a problem's reference, which would make "95 % of the best" mean two things.
    ``baseline`` names the planner to compare the others with seed by seed (default: the first file's)."""
    if not result_files:
        raise ValueError("nothing to merge: name at least one results.json")
    loaded = [json.loads(Path(f).read_text()) for f in result_files]
    references: dict = {}
    problems: dict[str, dict] = {}
    planners: dict[str, dict] = {}
    runs: dict[tuple, RunResult] = {}
    for f, data in zip(result_files, loaded):
        for name, ref in data["references"].items():
            if name in references and not math.isclose(references[name]["best"], ref["best"], rel_tol=1e-9):
                raise ValueError(f"{f}: problem {name!r} has best {ref['best']}, another file {references[name]['best']};"
                                 f" results of different problem definitions cannot be merged")
            references.setdefault(name, ref)
        for spec in data["config"]["problems"]:
            problems.setdefault(spec["name"], spec)
        for spec in data["config"]["planners"]:
            planners.setdefault(spec["name"], spec)
        for r in data["runs"]:
            runs[(r["problem"], r["planner"], r["seed"])] = RunResult(**r)  # a later file's run of a seed wins
    seeds = sorted({seed for _, _, seed in runs})
    config = validate(BenchConfig, {**loaded[0]["config"], "problems": list(problems.values()),
                                         "planners": list(planners.values()), "seeds": len(seeds),
                                         "first_seed": seeds[0], "out": out,
                                         "baseline": baseline or loaded[0]["config"].get("baseline")},
                      source="the merged results")
    built = {spec.name: make_problem(spec) for spec in config.problems}
    try:
        return write_outputs(config, built, list(runs.values()), references, out)
    finally:
        for problem in built.values():
            problem.close()


def format_table(config: BenchConfig, summary: dict, references: dict) -> str:
    lines = [f"# Bench {config.name}: median over {config.seeds} seeds", ""]
    for problem, rows in summary.items():
        ref = references[problem]
        budget = next(p.budget for p in config.problems if p.name == problem)
        p = ref["success_share"]
        expected_random = math.log(0.5) / math.log(1 - p) if 0 < p < 1 else math.inf
        lines += [f"## {problem} (budget {budget}; best feasible {ref['best']:.4g}; feasible share of the space "
                  f"{ref['feasible_share']:.0%}; a random point succeeds with p = {p:.2%}, so random search needs "
                  f"a median {expected_random:.0f} experiments)", "",
                  "| planner | experiments to 95 % | runs reaching it | final simple regret [q25, q75] | "
                  "infeasible experiments | planner s/iter (median, last 5) |",
                  "|---|---|---|---|---|---|"]
        for name, row in rows.items():
            if row["runs"] == 0:  # merged results: a planner not run on this problem
                continue
            if row["runs"] != config.seeds:  # merged results can hold fewer seeds of some planners
                name = f"{name} ({row['runs']} seeds)"
            if "experiments_to_95" not in row:
                lines.append(f"| {name} | failed: {'; '.join(row['errors'])[:200]} | | | | |")
                continue
            hits = row["experiments_to_95"]
            hits_text = f"{hits:g}" if math.isfinite(hits) else f"> {budget}"
            regret, q = row["final_regret_median"], row["final_regret_q25_q75"]
            regret_text = f"{regret:.4g} [{q[0]:.3g}, {q[1]:.3g}]" if regret is not None else "no feasible point"
            lines.append(f"| {name} | {hits_text} | {row['reached_95_share']:.0%} | {regret_text} | "
                         f"{row['infeasible_share']:.0%} | {row['planner_s_per_iter']:.3f}, {row['planner_s_at_end']:.3f} |")
        paired = {name: row["paired"] for name, row in rows.items() if row.get("paired")}
        if paired:
            lines += ["", f"Seed by seed against {config.baseline} (experiments to 95 %; a run that never reaches it "
                          f"counts {budget + 1}):", "",
                      "| planner | seeds | wins / ties / losses | median difference [95 % bootstrap CI] | ratio of medians |",
                      "|---|---|---|---|---|"]
            for name, c in paired.items():
                ci = f"[{c['ci95'][0]:g}, {c['ci95'][1]:g}]" if c["ci95"] else "(too few seeds)"
                lines.append(f"| {name} | {c['seeds']} | {c['wins']} / {c['ties']} / {c['losses']} | "
                             f"{c['median_difference']:+g} {ci} | {c['ratio_of_medians']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot_regret(config: BenchConfig, problems: dict[str, BenchProblem], results: list[RunResult], references: dict,
                path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = config.problems
    fig, axes = plt.subplots(1, len(specs), figsize=(max(4.6 * len(specs), 6.5), 3.8), squeeze=False)
    for ax, spec in zip(axes[0], specs):
        problem = problems[spec.name]
        for planner in config.planners:
            runs = [r for r in results if r.problem == spec.name and r.planner == planner.name and r.error is None]
            if not runs:
                continue
            curves = np.array([best_so_far_regret(problem.objective.direction, r, references[spec.name]["best"])
                               for r in runs])
            x = np.arange(1, curves.shape[1] + 1)
            with np.errstate(all="ignore"):
                q25, q50, q75 = (np.nanpercentile(curves, q, axis=0) for q in (25, 50, 75))
            ax.plot(x, q50, label=planner.name)
            ax.fill_between(x, q25, q75, alpha=0.18)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(spec.name)
        ax.set_xlabel("experiments")
        ax.set_ylabel("simple regret (feasible)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{config.name}: median and interquartile band over {config.seeds} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
