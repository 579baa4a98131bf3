"""``sdl causal history|effect|whatif``: causal reasoning over a campaign's ledger."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from sdl.cli import assignments, main


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
    from sdl.agents.causal_planner import write_history
    from sdl.env.calphad import default_cache_path
    from sdl.env.twin import AlloyTwin
    from sdl.ledger import LedgerError

    click.echo("building the twin (CALPHAD tables; minutes on a cold cache) ...")
    twin = AlloyTwin(cache_path=default_cache_path())
    try:
        path = write_history(out, twin, count, seed)
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    finally:
        twin.close()
    click.echo(f"wrote {count} specimens to {path}")


def _causal_inputs(campaign_dir: Path, config: Path):
    from sdl.agents.causal_planner import history_frame
    from sdl.ledger import LedgerError
    from sdl.settings import ConfigError
    from sdl.surrogates.causal import CausalGraph, load_causal_config

    try:
        cfg = load_causal_config(config)
        data = history_frame(campaign_dir)
    except (ConfigError, LedgerError, ValueError) as e:
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
    """E[outcome | do(treatment)] by what identifies it (back-door or front-door adjustment) and by the
    fitted SCM where its mechanisms allow, beside the naive E[outcome | treatment]; prints a table,
    writes effect_<treatment>.png and .json. Refused, with the open path, when nothing identifies it."""
    from sdl.surrogates.causal import (
        NotIdentifiable,
        backdoor_effect,
        frontdoor_effect,
        naive_effect,
        plot_effects,
        scm_effect,
    )
    from sdl.surrogates.identification import identify

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
        found = identify(graph, variable, outcome)
        click.echo(f"identified by {found.describe()}")
        if adjustment is not None or found.method == "back-door":
            click.echo(f"back-door regression on {len(data)} specimens ...")
            estimate = backdoor_effect(data, graph, variable, outcome, grid, adjustment=adjustment,
                                       settings=cfg.mechanisms)
        else:
            click.echo(f"front-door regressions on {len(data)} specimens ...")
            estimate = frontdoor_effect(data, graph, variable, outcome, grid, mediators=found.mediators,
                                        settings=cfg.mechanisms)
    except NotIdentifiable as e:
        raise click.ClickException(f"not identifiable: {e}") from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    curves = [estimate]
    try:
        scm.check_simulable([variable], outcome)
    except NotIdentifiable as e:
        click.echo(f"no SCM simulation: {e}")
    else:
        click.echo(f"fitting the SCM's {sum(1 for v in graph.observed if graph.parents(v))} mechanisms ...")
        curves.append(scm_effect(scm.fit(data), variable, outcome, grid))
    curves.append(naive_effect(data, variable, outcome, grid, settings=cfg.mechanisms))
    names = {"back-door adjustment": "back-door", "front-door adjustment": "front-door",
             "SCM simulation (do)": "SCM do()", "conditional E[Y | T] (naive)": "naive E[Y|T]"}
    click.echo(f"{variable:>14} | " + " | ".join(f"{names[c.method]:>16}" for c in curves)
               + f"   ({outcome}, mean +- sd)")
    for i, t in enumerate(grid):
        cells = " | ".join(f"{c.mean[i]:8.1f} +- {c.std[i]:5.1f}" for c in curves)
        click.echo(f"{t:14.4g} | {cells}")
    out = out or campaign_dir / "causal"
    out.mkdir(parents=True, exist_ok=True)
    png = plot_effects(curves, out / f"effect_{variable}.png", outcome=outcome)
    (out / f"effect_{variable}.json").write_text(json.dumps(
        {"treatment": variable, "outcome": outcome, "values": grid, "identified_by": found.method,
         "adjustment": list(estimate.adjustment), "mediators": list(estimate.mediators),
         **{c.method: {"mean": c.mean.tolist(), "std": c.std.tolist()} for c in curves}}, indent=2))
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
    requested = assignments(changes, "--set", "NAME=VALUE")
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
        scm.check_counterfactual(intervention)
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
