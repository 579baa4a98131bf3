"""``sdl bench`` and ``sdl bench-merge``: planners x problems x seeds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sdl.cli import main


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", type=int, help="Override the config's number of seeds.")
@click.option("--first-seed", type=click.IntRange(min=0),
              help="Run seeds FIRST_SEED .. FIRST_SEED + seeds - 1 (to add seeds to an earlier run; see bench-merge).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder (default: runs/bench/<name>).")
@click.option("--planners", help="Comma-separated subset of the config's planners.")
@click.option("--baseline", help="Compare every planner seed by seed with this one (default: the config's baseline).")
@click.option("--problems", help="Comma-separated subset of the config's problems.")
@click.option("--ray-address", help="Run the tasks on an existing Ray cluster ('auto' or HOST:PORT).")
@click.option("--no-progress", is_flag=True, help="No progress bar: one line per finished run (for logs).")
@click.option("--resume", is_flag=True,
              help="Keep the runs an earlier, unfinished bench journalled in the output folder (runs.jsonl) and run "
                   "only the rest.")
def bench(config: Path, seeds: int | None, first_seed: int | None, out: Path | None, planners: str | None,
          baseline: str | None, problems: str | None, ray_address: str | None, no_progress: bool,
          resume: bool) -> None:
    """Benchmark planners x problems x seeds (CONFIG, YAML) in parallel Ray tasks; write a table and regret curves.

    Each run is journalled in the output folder as it ends (runs.jsonl): a bench that was killed continues
    with the same command and --resume."""
    from sdl.bench import load_bench_config, run_bench
    from sdl.settings import ConfigError, validate

    try:
        chosen = {"planners": _names(planners), "problems": _names(problems)}
        # only the problems run are built to check the planners on them: building a twin variant tabulates CALPHAD
        cfg = load_bench_config(config, check_on=lambda spec: not chosen["problems"] or spec.name in chosen["problems"])
        update: dict = {}
        if seeds is not None:
            update["seeds"] = seeds
        if first_seed is not None:
            update["first_seed"] = first_seed
        if out is not None:
            update["out"] = out
        if ray_address is not None:
            update["ray_address"] = ray_address
        if baseline is not None:
            update["baseline"] = baseline
        for field, wanted in chosen.items():
            if wanted:
                known = {p.name: p for p in getattr(cfg, field)}
                unknown = [n for n in wanted if n not in known]
                if unknown:
                    raise ConfigError(f"--{field}: {unknown} not in the config; it has {sorted(known)}")
                update[field] = [known[n] for n in wanted]
        if "planners" in update and baseline is None and cfg.baseline not in {p.name for p in update["planners"]}:
            update["baseline"] = None  # the config's baseline is not run this time: no seed-by-seed table
        if update:  # validated again: a baseline must be among the planners run
            cfg = validate(type(cfg), {**cfg.model_dump(), **update}, source="the options")
        result = run_bench(cfg, progress=not no_progress, resume=resume)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    click.echo((Path(result["out"]) / "table.md").read_text())
    click.echo(f"wrote {result['out']}/table.md, regret.png, results.json")


def _names(option: str | None) -> list[str]:
    """The names a comma-separated option gives (none where it is not given)."""
    return [n.strip() for n in option.split(",") if n.strip()] if option else []


@main.command("bench-merge")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the merged table.")
@click.option("--baseline", help="Compare every planner seed by seed with this one (default: the first file's).")
def bench_merge(results: tuple[Path, ...], out: Path, baseline: str | None) -> None:
    """Merge the RESULTS (results.json files of `sdl bench` runs: other seeds, other planners) into one
    table and regret plot."""
    from sdl.bench import merge_results

    try:
        merged = merge_results(list(results), out, baseline=baseline)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise click.ClickException(f"cannot merge: {e}") from None
    click.echo((Path(merged["out"]) / "table.md").read_text())
    click.echo(f"wrote {merged['out']}/table.md, regret.png, results.json")
