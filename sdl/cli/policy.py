"""``sdl policy train|route``: the heat-treatment process policy (RLlib PPO)."""

from __future__ import annotations

from pathlib import Path

import click

from sdl.cli import assignments, main


@main.group()
def policy() -> None:
    """Heat-treatment process policies (RLlib PPO on the twin's heat-treatment MDP)."""


@policy.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default: runs/policy/<name>).")
@click.option("--iterations", type=click.IntRange(1, 10000), help="Override the config's PPO iterations.")
@click.option("--ray-address", help="Train on an existing Ray cluster ('auto' or HOST:PORT).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def policy_train(config: Path, out: Path | None, iterations: int | None, ray_address: str | None,
                 no_progress: bool) -> None:
    """Train a process policy (CONFIG, YAML); write the checkpoint, a learning curve and held-out scores."""
    import ray
    from tqdm import tqdm

    from sdl.agents.process_policy import TrainingStalled, load_policy_config, train_policy
    from sdl.settings import ConfigError

    try:
        cfg = load_policy_config(config)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if iterations is not None:
        cfg = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"iterations": iterations})})
    run_dir = out or cfg.out or Path("runs/policy") / cfg.name
    if ray_address:
        ray.init(address=ray_address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(2, cfg.ppo.num_env_runners + 1), include_dashboard=False, log_to_driver=False)
    bar = tqdm(total=cfg.ppo.iterations, desc="PPO", unit="iter", disable=no_progress)

    def progress(_i: int, row: dict) -> None:
        bar.update(1)
        bar.set_postfix({"return": f"{row['episode_return_mean']:.3f}", "steps": row["env_steps"]})

    try:
        summary = train_policy(cfg, run_dir, progress=progress)
    except TrainingStalled as e:
        raise click.ClickException(str(e)) from None
    finally:
        bar.close()
        ray.shutdown()
    scores = summary["held_out"]
    share = scores["share_of_optimum"]
    n = len(scores["compositions"])
    click.echo(f"trained in {summary['training_seconds']:.0f} s; checkpoint: {summary['checkpoint']}")
    if n:
        click.echo(f"held-out compositions ({n}), return as a share of the exhaustive optimum: policy {share['policy']:.1%}, "
                   f"textbook {share['textbook']:.1%}, random {share['random']:.1%}")
    click.echo(f"wrote {run_dir}/learning_curve.png, training.json")


@policy.command("route")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("composition", nargs=-1, required=True, metavar="ELEMENT=FRACTION...")
def policy_route(checkpoint: Path, composition: tuple[str, ...]) -> None:
    """Print the route a trained policy plans for a composition, e.g. Al=0.11 Co=0.13 Cr=0.10."""
    from sdl.agents.process_policy import ProcessPolicy

    fractions = assignments(composition, "COMPOSITION", "ELEMENT=FRACTION")
    try:
        steps, hardness_hv, total = ProcessPolicy(checkpoint).route(fractions)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    for i, step in enumerate(steps, 1):
        click.echo(f"{i}. {step.operation:12s} {step.temperature_k:7.0f} K  {step.duration_s / 3600:5.1f} h  "
                   f"then {step.quench_medium} quench")
    if not steps:
        click.echo("no heat treatment (the policy stops at once)")
    click.echo(f"expected hardness {hardness_hv:.0f} HV (return {total:.3f})")
