"""The ``sdl`` command line."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click
import yaml


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sdl")
def main() -> None:
    """Self-driving laboratory controller: plan, run and learn from experiments."""


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--campaign-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the ledger, journals and report go (default: the config's campaign_dir, else runs/<name>).")
@click.option("--resume", is_flag=True, help="Continue the campaign in --campaign-dir after a crash or a stop.")
@click.option("--ray-address", help="Join an existing Ray cluster ('auto' or HOST:PORT) instead of starting one.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def run(config: Path, campaign_dir: Path | None, resume: bool, ray_address: str | None, no_progress: bool, verbose: int) -> None:
    """Run the campaign described by CONFIG (YAML) to its budget or target."""
    from sdl.campaign import Campaign, CampaignError
    from sdl.config import ConfigError, load_config
    from sdl.report import write_report

    _setup_logging(verbose)
    try:
        cfg = load_config(config)
        campaign = Campaign(cfg, campaign_dir, resume=resume, ray_address=ray_address, progress=not no_progress)
        summary = campaign.run()
    except (ConfigError, CampaignError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"campaign {summary.campaign_id}: {summary.state} ({summary.stop_reason}) in {summary.wall_s:.1f} s")
    click.echo("experiments: " + ", ".join(f"{k} {v}" for k, v in summary.counts.items()))
    if summary.best_value is not None:
        click.echo(f"best {cfg.objective.measurement} = {summary.best_value:.6g} at {_point_text(summary.best_point)}")
    report = write_report(campaign.campaign_dir)
    click.echo(f"report: {report}")
    if summary.state == "interrupted":
        click.echo(f"resume with: sdl run {config} --campaign-dir {campaign.campaign_dir} --resume")
        sys.exit(130)


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", type=int, help="Override the config's number of seeds.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder (default: runs/bench/<name>).")
@click.option("--planners", help="Comma-separated subset of the config's planners.")
@click.option("--problems", help="Comma-separated subset of the config's problems.")
@click.option("--ray-address", help="Run the tasks on an existing Ray cluster ('auto' or HOST:PORT).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def bench(config: Path, seeds: int | None, out: Path | None, planners: str | None, problems: str | None,
          ray_address: str | None, no_progress: bool) -> None:
    """Benchmark planners x problems x seeds (CONFIG, YAML) in parallel Ray tasks; write a table and regret curves."""
    from sdl.bench import load_bench_config, run_bench
    from sdl.config import ConfigError

    try:
        cfg = load_bench_config(config)
        update: dict = {}
        if seeds is not None:
            update["seeds"] = seeds
        if out is not None:
            update["out"] = out
        if ray_address is not None:
            update["ray_address"] = ray_address
        for option, field, names in (("--planners", "planners", planners), ("--problems", "problems", problems)):
            if names:
                wanted = [n.strip() for n in names.split(",") if n.strip()]
                known = {p.name: p for p in getattr(cfg, field)}
                unknown = [n for n in wanted if n not in known]
                if unknown:
                    raise ConfigError(f"{option}: {unknown} not in the config; it has {sorted(known)}")
                update[field] = [known[n] for n in wanted]
        if update:
            cfg = cfg.model_copy(update=update)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    result = run_bench(cfg, progress=not no_progress)
    click.echo((Path(result["out"]) / "table.md").read_text())
    click.echo(f"wrote {result['out']}/table.md, regret.png, results.json")


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

    from sdl.agents.process_policy import load_policy_config, train_policy
    from sdl.config import ConfigError

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

    fractions = {}
    for item in composition:
        element, sep, value = item.partition("=")
        try:
            fractions[element.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not ELEMENT=FRACTION", param_hint="COMPOSITION") from None
        if not sep:
            raise click.BadParameter(f"{item!r} is not ELEMENT=FRACTION", param_hint="COMPOSITION")
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


@main.group()
def mlip() -> None:
    """Machine-learned interatomic potentials: active learning against an atomistic oracle."""


@mlip.command("active-learn")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default: runs/mlip/<name>).")
@click.option("--max-oracle-calls", type=click.IntRange(2, 100000), help="Override the config's oracle budget.")
@click.option("--no-random", is_flag=True, help="Skip the random-selection baseline.")
@click.option("--device", help="auto, cpu, cuda, cuda:N (overrides the config).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def mlip_active_learn(config: Path, out: Path | None, max_oracle_calls: int | None, no_random: bool,
                      device: str | None, no_progress: bool) -> None:
    """Train an MLIP committee by active learning (CONFIG, YAML): label what the committee is least
    sure of, retrain, until the held-out error converges; write committee.pt, learning.json and
    learning_curve.png (held-out error vs oracle calls, beside random selection)."""
    from tqdm import tqdm

    from sdl.config import ConfigError
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
                   f"meV/atom ({curve['stopped']}); target {cfg.target_force_mae_mev_per_ang:g} meV/A reached after "
                   f"{summary['calls_to_target'][arm] or 'not'} calls")
    click.echo(f"wrote {cfg.out}/committee.pt, learning.json, learning_curve.png")


@main.command()
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def status(campaign_dir: Path) -> None:
    """Show a campaign's progress from its ledger (safe while it runs)."""
    from sdl.ledger import Ledger, LedgerError
    from sdl.report import summarize

    try:
        with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
            click.echo(summarize(ledger))
    except LedgerError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: CAMPAIGN_DIR/report.")
def report(campaign_dir: Path, out: Path | None) -> None:
    """Write PNG plots and a markdown summary of a campaign."""
    from sdl.ledger import LedgerError
    from sdl.report import write_report

    try:
        path = write_report(campaign_dir, out)
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"report: {path}")


@main.group()
def ledger() -> None:
    """Work with a campaign's ledger."""


@ledger.command("export")
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "file_format", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: CAMPAIGN_DIR/export.")
def ledger_export(campaign_dir: Path, file_format: str, out: Path | None) -> None:
    """Export one row per experiment as CSV or Parquet."""
    from sdl.ledger import Ledger, LedgerError, export

    try:
        with Ledger.in_campaign(campaign_dir, readonly=True) as db:
            path = export(db, out or campaign_dir / "export", file_format)
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    click.echo(str(path))


@main.group()
def instrument() -> None:
    """Instrument drivers."""


@instrument.command("list")
def instrument_list() -> None:
    """List the installed instrument drivers."""
    from sdl.instruments.base import available_drivers

    for name, ep in sorted(available_drivers().items()):
        click.echo(f"{name:24s} {ep.value}")


@instrument.command("serve")
@click.argument("driver")
@click.option("--bus", "bus_address", required=True, help="Broker address, e.g. tcp://HOST:PORT (see the campaign's bus.json).")
@click.option("--name", help="Joins as instrument.NAME (default: the driver's name).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Driver setting (YAML value), repeatable: --option noise_std=0.1")
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path),
              help="Idempotency journal (SQLite) (default: ./sdl-journal-NAME.sqlite).")
@click.option("--capacity", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("-v", "--verbose", count=True)
def instrument_serve(driver: str, bus_address: str, name: str | None, options: tuple[str, ...],
                     journal: Path | None, capacity: int, verbose: int) -> None:
    """Serve DRIVER on the bus in this process, without Ray (the path of a lab PC)."""
    from pydantic import ValidationError

    from sdl.agents.instrument_driver import InstrumentDriverService
    from sdl.protocol import describe_validation_error
    from sdl.service import Worker

    _setup_logging(max(verbose, 1))
    settings = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{option!r} is not KEY=VALUE", param_hint="--option")
        settings[key] = yaml.safe_load(value)
    name = name or driver.replace("_", "-")
    try:
        service = InstrumentDriverService(driver=driver, options=settings, journal_path=journal or Path(f"sdl-journal-{name}.sqlite"))
    except ValidationError as e:
        raise click.ClickException(f"driver {driver} options: {describe_validation_error(e)}") from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    worker = Worker(service, bus_address, service_name=f"instrument.{name}", capacity=capacity)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    click.echo(f"serving {driver} as instrument.{name} on {bus_address} (Ctrl-C to stop)", err=True)
    stop.wait()
    worker.stop()


def _point_text(point) -> str:
    parts = dict(point.parameters)
    if point.composition is not None:
        parts.update(point.composition.root)
    return json.dumps({k: round(v, 6) for k, v in parts.items()})


if __name__ == "__main__":
    main()
