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
                   f"handed out by the process planner {share['handed_out']:.1%}, textbook {share['textbook']:.1%}, "
                   f"random {share['random']:.1%}")
    click.echo(f"wrote {run_dir}/policy.npz (the policy: use it with `process_planner: {{settings: {{policy: PATH}}}}`), "
               "learning_curve.png, training.json")


@policy.command("route")
@click.argument("composition", nargs=-1, required=True, metavar="ELEMENT=FRACTION...")
@click.option("--policy", "policy_file", type=click.Path(exists=True, path_type=Path),
              help="Policy file, or a `sdl policy train` run folder (default: the policy sdl ships).")
def policy_route(composition: tuple[str, ...], policy_file: Path | None) -> None:
    """Print the route the process planner would hand out for a composition (e.g. Al=0.11 Co=0.13
    Cr=0.10): the policy's, the textbook one or none, whichever is expected to return most."""
    from sdl.agents.process_policy import SHIPPED_POLICY, ProcessPolicy, choose_route

    fractions = assignments(composition, "COMPOSITION", "ELEMENT=FRACTION")
    try:
        policy = ProcessPolicy(policy_file or SHIPPED_POLICY)
        options = {"policy": policy.route(fractions), "textbook": policy.textbook(fractions),
                   "as_cast": ([], policy.as_cast(fractions), 0.0)}
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    best = choose_route(options["policy"][0], options["policy"][2], options["textbook"][2])
    click.echo(f"policy {policy.path}")
    for name, (steps, hardness_hv, total) in options.items():
        holds = ", ".join(f"{s.temperature_k:.0f} K {s.duration_s / 3600:g} h" for s in steps) or "no heat treatment"
        mark = "->" if name == best else "  "
        click.echo(f"{mark} {name:9s} {holds:52s} expected {hardness_hv:4.0f} HV, return {total:+.3f}")
    click.echo("(each hold is followed by a water quench; -> marks the route the process planner hands out)")
