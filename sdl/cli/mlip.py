"""``sdl mlip active-learn``: interatomic potentials by active learning."""

from __future__ import annotations

from pathlib import Path

import click

from sdl.cli import main


@main.group()
def mlip() -> None:
    """Machine-learned interatomic potentials: active learning against an atomistic oracle."""


@mlip.command("active-learn")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default: runs/mlip/<name>).")
@click.option("--max-oracle-calls", type=click.IntRange(2, 100000), help="Override the config's oracle budget.")
@click.option("--no-random", is_flag=True, help="Skip the random-selection baseline.")
@click.option("--device", help="auto, cpu, cuda, cuda:N (overrides the config).")
@click.option("--no-progress", is_flag=True, help="A line per round instead of a progress bar (for logs).")
def mlip_active_learn(config: Path, out: Path | None, max_oracle_calls: int | None, no_random: bool,
                      device: str | None, no_progress: bool) -> None:
    """Train an MLIP committee by active learning (CONFIG, YAML): label what the committee is least
    sure of, retrain, until the held-out error converges; write committee.pt, learning.json and
    learning_curve.png (held-out error vs oracle calls, beside random selection)."""
    from tqdm import tqdm

    from sdl.settings import ConfigError
    from sdl.surrogates.mlip_learning import active_learn, load_active_learning_config

    try:
        cfg = load_active_learning_config(config)
        update = {"out": out or cfg.out or Path("runs/mlip") / cfg.name}
        if max_oracle_calls is not None:
            update["max_oracle_calls"] = max_oracle_calls
        if no_random:
            update["compare_random"] = False
        if device is not None:
            update["device"] = device
        cfg = cfg.model_validate({**cfg.model_dump(), **update})
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    arms = [cfg.selection] + (["random"] if cfg.compare_random else [])
    bar = tqdm(total=cfg.max_oracle_calls * len(arms), desc="oracle calls", unit="call", disable=no_progress)
    done = {arm: 0 for arm in arms}

    def progress(selection: str, calls: int, force_mae: float) -> None:
        if no_progress:  # a log wants one line per round, not a redrawn bar
            click.echo(f"{selection:>9}: {calls} oracle calls, held-out force MAE {force_mae:.1f} meV/A")
            return
        bar.update(calls - done[selection])
        done[selection] = calls
        bar.set_postfix({"arm": selection, "force MAE meV/A": f"{force_mae:.1f}"})

    try:
        summary = active_learn(cfg, progress=progress)
    finally:
        bar.close()
    for arm, curve in summary["curves"].items():
        click.echo(f"{arm:>9}: {curve['oracle_calls'][-1]} oracle calls -> force MAE "
                   f"{curve['force_mae_mev_per_ang'][-1]:.1f} meV/A, energy MAE {curve['energy_mae_mev_per_atom'][-1]:.2f} "
                   f"meV/atom ({curve['stopped']}); {cfg.target_force_mae_mev_per_ang:g} meV/A reached after "
                   f"{summary['calls_to_target'][arm] or 'not'} calls, {cfg.target_energy_mae_mev_per_atom:g} meV/atom "
                   f"after {summary['calls_to_energy_target'][arm] or 'not'}")
    click.echo(f"wrote {cfg.out}/committee.pt, learning.json, learning_curve.png")
