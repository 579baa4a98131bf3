"""``sdl xc train|check|bench``: a learned exchange-correlation functional, its constraints, its accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sdl.cli import main, run_stages


@main.group()
def xc() -> None:
    """A machine-learned exchange-correlation functional (GGA) with exact constraints, run through PySCF."""


def _config(path: Path | None, out: Path | None):
    from sdl.settings import ConfigError
    from sdl.surrogates.xc_training import XcConfig, load_xc_config

    try:
        cfg = load_xc_config(path) if path is not None else XcConfig()
        return cfg.model_validate({**cfg.model_dump(), "out": out}) if out is not None else cfg
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e)) from None


@xc.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default: runs/xc/<name>).")
@click.option("--no-progress", is_flag=True, help="A line per 10 % instead of progress bars (for logs).")
def xc_train(config: Path, out: Path | None, no_progress: bool) -> None:
    """Compute (once; cached) the PBE densities of the G2-1 molecules and atoms, fit the networks to
    PBE, train on the training molecules' atomization energies with the constraint penalties, and write
    functional.pt and train.json (CONFIG, YAML)."""
    from sdl.surrogates.xc_training import train

    cfg = _config(config, out)
    summary = run_stages(lambda progress: train(cfg, progress=progress), no_progress, (ValueError, RuntimeError))
    mae = summary["held_out_mae_kcal_non_scf"]
    click.echo(f"trained on {len(summary['train'])} molecules in {summary['train_s']:.0f} s; held-out "
               f"({len(summary['test'])} molecules) MAE on PBE densities: learned {mae['learned']:.2f} kcal/mol, "
               f"PBE {mae['pbe']:.2f}")
    click.echo(f"wrote {summary['checkpoint']}; next: sdl xc bench {config} (self-consistent, beside PBE, SCAN, "
               f"B3LYP) and sdl xc check {summary['checkpoint']}")


@xc.command("check")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--basis", help="Basis of the self-consistent checks (default: the one it was trained in).")
@click.option("--grid-level", type=click.IntRange(0, 9), help="PySCF grid level (default: the training one).")
@click.option("--no-scf", is_flag=True, help="Only the checks on (r_s, zeta, s) grids, no PySCF runs.")
@click.option("--json", "as_json", is_flag=True, help="The table as JSON.")
def xc_check(checkpoint: Path, basis: str | None, grid_level: int | None, no_scf: bool, as_json: bool) -> None:
    """Measure every exact constraint of the functional in CHECKPOINT: built in by construction,
    penalised in training (and how well met), or only checked; exit 1 if one built in fails."""
    from sdl.surrogates.xc_constraints import check_constraints
    from sdl.surrogates.xc_functional import XcFunctional

    try:
        model = XcFunctional.load(checkpoint)
        if grid_level is None:
            grid_level = model.metadata.get("grid_level", 3)
        rows = check_constraints(model, basis=basis or model.metadata.get("basis", "def2-tzvp"), grid_level=grid_level,
                                 scf=not no_scf, progress=lambda what: click.echo(what + " ...", err=True))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    else:
        click.echo("| constraint | treatment | measured | target | holds |")
        click.echo("|---|---|---|---|---|")
        for r in rows:
            click.echo(f"| {r['constraint']} | {r['treatment']} | {r['measured']:.3g} {r['unit']} | {r['target']} | "
                       f"{'yes' if r['holds'] else 'NO'} |")
    broken = [r["constraint"] for r in rows if r["treatment"].startswith("by construction") and not r["holds"]]
    if broken:
        raise click.ClickException(f"constraints meant to hold by construction fail: {'; '.join(broken)}")


@xc.command("bench")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The learned functional (default: functional.pt in the run folder).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default: runs/xc/<name>).")
@click.option("--no-progress", is_flag=True, help="A line per 10 % instead of progress bars (for logs).")
def xc_bench(config: Path, checkpoint: Path | None, out: Path | None, no_progress: bool) -> None:
    """Self-consistent atomization energies of the G2-1 molecules with the learned functional and with
    PBE, SCAN and B3LYP (libxc) in the same basis: MAE on held-out and training molecules, SCF
    convergence and cost; writes bench.json and atomization.png."""
    from sdl.report.xc import plot_benchmark
    from sdl.surrogates.xc_training import benchmark

    cfg = _config(config, out)
    checkpoint = checkpoint or cfg.checkpoint
    if not checkpoint.exists():
        raise click.ClickException(f"{checkpoint}: no such checkpoint; run `sdl xc train {config}` first")
    result = run_stages(lambda progress: benchmark(cfg, checkpoint, progress=progress), no_progress,
                        (ValueError, RuntimeError))
    plot_benchmark(result, cfg.folder / "atomization.png")
    click.echo(f"G2-1, self-consistent, {cfg.basis}, grid level {cfg.grid_level}; {len(result['test'])} held-out "
               f"molecules")
    click.echo("| functional | held-out MAE | training MAE | all MAE | SCF converged | median s/SCF | time vs PBE |")
    click.echo("|---|---|---|---|---|---|---|")
    for name, f in result["functionals"].items():
        click.echo(f"| {name} | {f['held_out_mae_kcal']:.2f} | {f['training_mae_kcal']:.2f} | {f['all_mae_kcal']:.2f} | "
                   f"{f['converged']}/{f['systems']} | {f['median_scf_s']:.2f} | {f['median_time_vs_pbe']:.2f}x |")
    click.echo(f"(kcal/mol) wrote {cfg.folder}/bench.json, atomization.png")
