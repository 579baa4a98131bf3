"""``sdl transfer pretrain|evaluate``: a Deep Sets model carried from one alloy system to another."""

from __future__ import annotations

from pathlib import Path

import click

from sdl.cli import main, run_stages


@main.group()
def transfer() -> None:
    """Transfer learning across alloy systems (Deep Sets: any number of components)."""


def _config(path: Path, out: Path | None):
    from sdl.settings import ConfigError
    from sdl.surrogates.transfer_learning import load_transfer_config

    try:
        cfg = load_transfer_config(path)
        return cfg.model_validate({**cfg.model_dump(), "out": out}) if out is not None else cfg
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def _run(step, config: Path, out: Path | None, no_progress: bool) -> tuple:
    """``step(cfg, progress=...)`` with the config read and progress shown; its errors as one line."""
    cfg = _config(config, out)
    return cfg, run_stages(lambda progress: step(cfg, progress=progress), no_progress)


@transfer.command("pretrain")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default: runs/transfer/<name>).")
@click.option("--no-progress", is_flag=True, help="A line per 10 % instead of progress bars (for logs).")
def transfer_pretrain(config: Path, out: Path | None, no_progress: bool) -> None:
    """Label the source system's random alloys (cached after the first run) and train the Deep Sets
    ensemble on them (CONFIG, YAML); write source_model.pt and pretrain.json."""
    from sdl.surrogates.transfer_learning import pretrain

    summary = _run(pretrain, config, out, no_progress)[1]
    click.echo(f"{summary['source']}: {summary['alloys']} alloys; held-out MAE of {summary['property']} "
               f"{summary['held_out_mae']:.4g} (property sd {summary['property_sd']:.4g})")
    click.echo(f"wrote {summary['checkpoint']}")


@transfer.command("evaluate")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default: runs/transfer/<name>).")
@click.option("--no-progress", is_flag=True, help="A line per 10 % instead of progress bars (for logs).")
def transfer_evaluate(config: Path, out: Path | None, no_progress: bool) -> None:
    """Learning curves on the target system: held-out MAE against the number of target samples for
    training from scratch, feature transfer, partial and full fine-tuning (CONFIG, YAML; run `pretrain` first);
    write learning_curves.json and learning_curves.png."""
    from sdl.surrogates.transfer_learning import evaluate

    cfg, summary = _run(evaluate, config, out, no_progress)
    sizes = list(next(iter(summary["mae"].values())))
    click.echo(f"{summary['source']} -> {summary['target']}, {summary['property']}: median held-out MAE over "
               f"{summary['seeds']} draws (source model alone: {summary['source_model_mae']:.4g}; target sd "
               f"{summary['target_property_sd']:.4g})")
    click.echo("| regime | " + " | ".join(f"N = {n}" for n in sizes) + " |")
    click.echo("|---|" + "---|" * len(sizes))
    reduction = summary.get("reduction_vs_scratch", {})
    for regime, by_n in summary["mae"].items():
        cells = []
        for n in sizes:
            cell = f"{by_n[n]['median']:.4g}"
            if regime in reduction:
                cell += f" ({-100 * reduction[regime][n]:+.0f} %)"
            cells.append(cell)
        click.echo(f"| {regime} | " + " | ".join(cells) + " |")
    click.echo(f"wrote {cfg.folder}/learning_curves.json, learning_curves.png")
