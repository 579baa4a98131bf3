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


@mlip.command("md")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("structure", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--temperature-k", type=click.FloatRange(min=1.0, max=10000.0), default=600.0, show_default=True,
              help="Langevin thermostat temperature (K).")
@click.option("--steps", type=click.IntRange(1, 10_000_000), default=1000, show_default=True, help="MD steps.")
@click.option("--timestep-fs", type=click.FloatRange(min=0.01, max=10.0), default=2.0, show_default=True)
@click.option("--trust-level", type=click.FloatRange(min=0.0, min_open=True),
              help="Worst-atom committee force spread (eV/A) beyond which a frame is untrusted "
                   "(default: the level learned in the checkpoint's active learning).")
@click.option("--keep-going", is_flag=True, help="Run all steps and collect every untrusted frame (default: stop at the first).")
@click.option("--label", "oracle", help="Hand untrusted frames to this oracle calculator (e.g. emt, pyscf) and "
                                        "write them labelled.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("untrusted.extxyz"),
              show_default=True, help="Where the untrusted frames go (extended XYZ).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
def mlip_md(checkpoint: Path, structure: Path, temperature_k: float, steps: int, timestep_fs: float,
            trust_level: float | None, keep_going: bool, oracle: str | None, out: Path, seed: int, device: str) -> None:
    """MD of STRUCTURE (any file ASE reads: extxyz, POSCAR, CIF) with the committee in CHECKPOINT,
    checked at every step against the trust level: report where the run leaves the region the
    potential knows, and write those frames (labelled by --label's oracle when given) to --out."""
    import ase.io
    import numpy as np

    from sdl.surrogates.mlip import MlipCalculator, load_committee
    from sdl.surrogates.mlip_on_the_fly import run_trusted_md

    try:
        committee = load_committee(checkpoint, device=device)
    except Exception as e:  # a file that is not a committee checkpoint: say so in one line
        raise click.ClickException(f"{checkpoint} is not an MLIP committee checkpoint ({type(e).__name__}: {e})") from None
    level = trust_level if trust_level is not None else committee.trust_level_ev_per_ang
    if level is None:
        raise click.ClickException(f"{checkpoint} carries no learned trust level; give --trust-level (eV/A)")
    try:
        atoms = ase.io.read(structure)
    except Exception as e:
        raise click.ClickException(f"cannot read {structure} as a structure ({type(e).__name__}: {e})") from None
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(committee.config.elements))
    if unknown:
        raise click.ClickException(f"{structure} has {', '.join(unknown)}; the potential knows "
                                   f"{', '.join(committee.config.elements)}")
    labeller = None
    if oracle is not None:
        from sdl.instruments.atomistic import AseCalculatorOracle
        from sdl.settings import ConfigError

        try:
            labeller = AseCalculatorOracle(calculator=oracle)
        except (ConfigError, ValueError) as e:
            raise click.ClickException(str(e)) from None
    frames = []
    try:
        run = run_trusted_md(atoms, MlipCalculator(committee, device=device), trust_level_ev_per_ang=level,
                             temperature_k=temperature_k, steps=steps, timestep_fs=timestep_fs,
                             stop_when_untrusted=not keep_going, rng=np.random.default_rng(seed),
                             on_untrusted=lambda frame: frames.append(labeller.label(frame) if labeller else frame))
    finally:
        if labeller is not None:
            labeller.close()
    spreads = run.worst_spreads_ev_per_ang
    click.echo(f"{run.steps} steps at {temperature_k:g} K; worst-atom spread median {np.median(spreads):.3f}, "
               f"max {max(spreads):.3f} eV/A against the trust level {level:.3f} eV/A")
    if not frames:
        click.echo("every frame within the trust level")
        return
    first = frames[0].info
    click.echo(f"{len(frames)} untrusted frame(s); the first at step {first['step']} (atom {first['worst_atom']}, "
               f"spread {first['max_force_spread_ev_per_ang']:.3f} eV/A){'; run stopped there' if run.stopped_early else ''}")
    ase.io.write(out, frames, format="extxyz")
    click.echo(f"wrote {out}" + (f" (labelled by {oracle})" if labeller else ""))
