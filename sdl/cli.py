"""The ``sdl`` command line."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click
import numpy as np
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
@click.option("--first-seed", type=click.IntRange(min=0),
              help="Run seeds FIRST_SEED .. FIRST_SEED + seeds - 1 (to add seeds to an earlier run; see bench-merge).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder (default: runs/bench/<name>).")
@click.option("--planners", help="Comma-separated subset of the config's planners.")
@click.option("--problems", help="Comma-separated subset of the config's problems.")
@click.option("--ray-address", help="Run the tasks on an existing Ray cluster ('auto' or HOST:PORT).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def bench(config: Path, seeds: int | None, first_seed: int | None, out: Path | None, planners: str | None,
          problems: str | None, ray_address: str | None, no_progress: bool) -> None:
    """Benchmark planners x problems x seeds (CONFIG, YAML) in parallel Ray tasks; write a table and regret curves."""
    from sdl.bench import load_bench_config, run_bench
    from sdl.config import ConfigError

    try:
        cfg = load_bench_config(config)
        update: dict = {}
        if seeds is not None:
            update["seeds"] = seeds
        if first_seed is not None:
            update["first_seed"] = first_seed
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


@main.command("bench-merge")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the merged table.")
def bench_merge(results: tuple[Path, ...], out: Path) -> None:
    """Merge the RESULTS (results.json files of `sdl bench` runs: other seeds, other planners) into one
    table and regret plot."""
    from sdl.bench import merge_results

    try:
        merged = merge_results(list(results), out)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise click.ClickException(f"cannot merge: {e}") from None
    click.echo((Path(merged["out"]) / "table.md").read_text())
    click.echo(f"wrote {merged['out']}/table.md, regret.png, results.json")


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

    fractions = _assignments(composition, "COMPOSITION", "ELEMENT=FRACTION")
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


def _assignments(items: tuple[str, ...], param: str, form: str) -> dict[str, float]:
    """NAME=NUMBER arguments as a dict; anything else is a usage error that shows the expected form."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not {form}", param_hint=param) from None
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not {form}", param_hint=param)
    return out


@main.group()
def causal() -> None:
    """Causal reasoning over a campaign's ledger: effects of interventions, counterfactuals."""


@causal.command("history")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "count", type=click.IntRange(10, 100000), default=400, show_default=True, help="Specimens.")
@click.option("--seed", type=int, default=0, show_default=True)
def causal_history(out: Path, count: int, seed: int) -> None:
    """Write a confounded lab history from the twin (past practice of env/lab_history.py) as a
    finished campaign ledger in OUT, for `sdl causal effect|whatif` and the causal planner."""
    from sdl.env.lab_history import write_history
    from sdl.env.twin import AlloyTwin

    click.echo("building the twin (CALPHAD tables; minutes on a cold cache) ...")
    twin = AlloyTwin()
    try:
        path = write_history(out, twin, count, seed)
    except FileExistsError as e:
        raise click.ClickException(str(e)) from None
    finally:
        twin.close()
    click.echo(f"wrote {count} specimens to {path / 'ledger.sqlite'}")


def _causal_inputs(campaign_dir: Path, config: Path):
    from sdl.config import ConfigError
    from sdl.surrogates.causal import CausalGraph, ledger_frame, load_causal_config

    try:
        cfg = load_causal_config(config)
        data = ledger_frame(campaign_dir)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    variables = CausalGraph(cfg.graph).observed
    missing = [v for v in variables if v not in data.columns]
    if missing:
        raise click.ClickException(f"{campaign_dir}: the ledger lacks the graph's variables {missing}")
    dropped = data[variables].isna().any(axis=1)
    if dropped.any():
        click.echo(f"leaving out {int(dropped.sum())} specimens with a missing variable (e.g. no ageing step)")
    return cfg, data[~dropped]


def _variable(cfg, name: str) -> str:
    """An element name means its mole-fraction variable."""
    return f"x_{name}" if name in cfg.elements else name


@causal.command("effect")
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--treatment", required=True, help="An element (Al) or any variable of the graph (age_temperature_k).")
@click.option("--values", help="Comma-separated treatment values (default: 5 between the 10th and 90th percentile).")
@click.option("--adjust", help="Comma-separated adjustment set to use (checked); default: found from the graph.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=Path("configs/causal.yaml"), show_default=True, help="Causal graph and mechanism settings.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: CAMPAIGN_DIR/causal.")
def causal_effect(campaign_dir: Path, treatment: str, values: str | None, adjust: str | None, config: Path,
                  out: Path | None) -> None:
    """E[outcome | do(treatment)] by back-door adjustment and by the fitted SCM, beside the naive
    E[outcome | treatment]; prints a table, writes effect_<treatment>.png and .json."""
    from sdl.surrogates.causal import NotIdentifiable, backdoor_effect, naive_effect, plot_effects, scm_effect

    cfg, data = _causal_inputs(campaign_dir, config)
    variable = _variable(cfg, treatment)
    scm = cfg.causal_model()
    graph, outcome = scm.graph, cfg.outcome
    if variable not in graph.observed:
        raise click.ClickException(f"{treatment!r} is not a variable of the graph; variables: {', '.join(graph.observed)}")
    try:
        grid = ([float(v) for v in values.split(",")] if values
                else np.quantile(data[variable], [0.1, 0.3, 0.5, 0.7, 0.9]).tolist())
    except ValueError:
        raise click.BadParameter(f"{values!r} is not a comma-separated list of numbers", param_hint="--values") from None
    adjustment = [a.strip() for a in adjust.split(",")] if adjust else None
    try:
        click.echo(f"back-door regression on {len(data)} specimens ...")
        backdoor = backdoor_effect(data, graph, variable, outcome, grid, adjustment=adjustment, settings=cfg.mechanisms)
    except NotIdentifiable as e:
        raise click.ClickException(f"not identifiable: {e}") from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"fitting the SCM's {sum(1 for v in graph.observed if graph.parents(v))} mechanisms ...")
    simulated = scm_effect(scm.fit(data), variable, outcome, grid)
    naive = naive_effect(data, variable, outcome, grid, settings=cfg.mechanisms)
    click.echo(f"adjustment set: {', '.join(backdoor.adjustment) or '(none needed)'}")
    click.echo(f"{variable:>14} | {'back-door':>16} | {'SCM do()':>16} | {'naive E[Y|T]':>16}   ({outcome}, mean +- sd)")
    for i, t in enumerate(grid):
        cells = " | ".join(f"{c.mean[i]:8.1f} +- {c.std[i]:5.1f}" for c in (backdoor, simulated, naive))
        click.echo(f"{t:14.4g} | {cells}")
    out = out or campaign_dir / "causal"
    out.mkdir(parents=True, exist_ok=True)
    png = plot_effects([backdoor, simulated, naive], out / f"effect_{variable}.png", outcome=outcome)
    (out / f"effect_{variable}.json").write_text(json.dumps(
        {"treatment": variable, "outcome": outcome, "values": grid, "adjustment": list(backdoor.adjustment),
         **{c.method: {"mean": c.mean.tolist(), "std": c.std.tolist()} for c in (backdoor, simulated, naive)}}, indent=2))
    click.echo(f"wrote {png} and {png.with_suffix('.json')}")


@causal.command("whatif")
@click.argument("campaign_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--specimen", required=True, help="Experiment id of a recorded specimen (e.g. e00012).")
@click.option("--set", "changes", multiple=True, required=True, metavar="NAME=VALUE",
              help="An element fraction (Ni=0.25; the balance element absorbs the change) or any variable; repeatable.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=Path("configs/causal.yaml"), show_default=True, help="Causal graph and mechanism settings.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: CAMPAIGN_DIR/causal.")
def causal_whatif(campaign_dir: Path, specimen: str, changes: tuple[str, ...], config: Path, out: Path | None) -> None:
    """Counterfactual for a recorded specimen (abduction, action, prediction): what it would have
    shown had NAME been VALUE, with 95 % intervals; writes whatif_<specimen>.png."""
    from sdl.surrogates.causal import composition_change, plot_counterfactual

    cfg, data = _causal_inputs(campaign_dir, config)
    if specimen not in data.index:
        raise click.ClickException(f"no finished specimen {specimen!r} in {campaign_dir} (ids like {data.index[0]})")
    requested = _assignments(changes, "--set", "NAME=VALUE")
    elements = {k: v for k, v in requested.items() if k in cfg.elements}
    others = {_variable(cfg, k): v for k, v in requested.items() if k not in cfg.elements}
    row = data.loc[specimen].to_dict()
    try:
        intervention = {**(composition_change(row, elements, elements=cfg.elements, balance=cfg.balance)
                           if elements else {}), **others}
        scm = cfg.causal_model()
        unknown = [k for k in intervention if k not in scm.graph.observed]
        if unknown:
            raise ValueError(f"{unknown} are not variables of the graph: {', '.join(scm.graph.observed)}")
        click.echo(f"fitting the SCM on {len(data)} specimens ...")
        scm.fit(data)
        result = scm.counterfactual(list(data.index).index(specimen), intervention)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    downstream = [v for v in scm.graph.observed if v in scm.graph.descendants(intervention)]
    click.echo(f"{specimen}, had {', '.join(f'{k} = {v:g}' for k, v in intervention.items())} been so:")
    for v in downstream:
        draws = result[v].numpy()
        lo, hi = np.quantile(draws, [0.025, 0.975])
        click.echo(f"  {v:24s} recorded {row[v]:10.4g}   counterfactual {draws.mean():10.4g}  [{lo:.4g}, {hi:.4g}]")
    out = out or campaign_dir / "causal"
    out.mkdir(parents=True, exist_ok=True)
    png = plot_counterfactual(row, result, downstream, out / f"whatif_{specimen}.png",
                              title=f"{specimen}: had {', '.join(f'{k}={v:g}' for k, v in requested.items())}")
    click.echo(f"wrote {png}")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--target", "targets", multiple=True, required=True, metavar="NAME=VALUE",
              help="A condition to generate for: hardness_hv=280 (and feasible=1, the default); repeatable.")
@click.option("--n", "count", type=click.IntRange(1, 100000), default=100, show_default=True, help="Alloys to generate.")
@click.option("--space", "space_config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=Path("configs/demo.yaml"), show_default=True, help="A campaign config whose space bounds the alloys.")
@click.option("--twin-samples", type=click.IntRange(64, 1000000), default=4096, show_default=True,
              help="Twin alloys (textbook route) the model learns from, besides DIRECTORY's ledger if it has one.")
@click.option("--epochs", type=click.IntRange(1, 100000), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def generate(directory: Path, targets: tuple[str, ...], count: int, space_config: Path, twin_samples: int,
             epochs: int, seed: int) -> None:
    """Generate alloys for target properties with the conditional VAE (every one inside the element
    bounds, fractions summing to 1). Learns from the twin and from DIRECTORY's ledger when it holds
    one; writes DIRECTORY/generated/{compositions.csv, cvae.pt, generated.png}, with the twin's
    hardness of each generated alloy as a check."""
    from tqdm import tqdm

    from sdl.config import ConfigError, load_config
    from sdl.env.heat_treatment import textbook_route
    from sdl.env.twin import AlloyTwin
    from sdl.surrogates.generative import (ledger_composition_data, plot_generated, save_composition_cvae,
                                           train_composition_cvae, twin_composition_data)

    wanted = {"feasible": 1.0, **_assignments(targets, "--target", "NAME=VALUE")}
    try:
        space = load_config(space_config).space
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if space.composition is None:
        raise click.ClickException(f"{space_config}: the space has no composition to generate")
    elements = list(space.composition.elements)
    click.echo(f"building the twin and labelling {twin_samples} alloys ...")
    twin = AlloyTwin()
    data = twin_composition_data(twin, space, twin_samples, seed=seed)
    if (directory / "ledger.sqlite").exists():
        try:
            data = data + ledger_composition_data(directory, elements)
        except ValueError as e:
            click.echo(f"not using the ledger: {e}")
    unknown = sorted(set(wanted) - set(data.condition_names))
    if unknown:
        raise click.BadParameter(f"unknown conditions {unknown}; the model conditions on {data.condition_names}",
                                 param_hint="--target")
    bar = tqdm(total=epochs, desc="training the conditional VAE", unit="epoch")
    model = train_composition_cvae(data, [space.composition.elements[e][0] for e in elements],
                                   [space.composition.elements[e][1] for e in elements], epochs=epochs, seed=seed,
                                   progress=lambda epoch, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
    bar.close()
    import torch

    condition = torch.tensor([[wanted[c] for c in data.condition_names]], dtype=torch.float32)
    fractions = model.sample(condition.expand(count, -1), torch.Generator().manual_seed(seed)).double().numpy()
    compositions = [dict(zip(elements, row.tolist())) for row in fractions]
    check = twin.properties(compositions, textbook_route(), phase_state="table").hardness_hv
    out = directory / "generated"
    out.mkdir(parents=True, exist_ok=True)
    save_composition_cvae(model, elements, out / "cvae.pt")
    rows = ["," .join([*elements, "twin_hardness_hv"])] + [
        ",".join([*(f"{v:.6f}" for v in row), f"{h:.1f}"]) for row, h in zip(fractions, check)]
    (out / "compositions.csv").write_text("\n".join(rows) + "\n")
    plot_generated(fractions, check, data, elements, wanted, out / "generated.png")
    bounds_ok = all(space.composition.elements[e][0] - 1e-7 <= v <= space.composition.elements[e][1] + 1e-7
                    for row in compositions for e, v in row.items())
    click.echo(f"{count} alloys; largest |sum - 1| = {np.abs(fractions.sum(1) - 1).max():.1e}; all inside the "
               f"element bounds: {bounds_ok}; twin hardness (textbook route) median {np.median(check):.0f} HV, "
               f"[{np.quantile(check, 0.1):.0f}, {np.quantile(check, 0.9):.0f}] (10-90 %)")
    click.echo(f"wrote {out / 'compositions.csv'}, {out / 'cvae.pt'}, {out / 'generated.png'}")


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
