"""``sdl pinn simulate|invert``: inverse characterisation of a layered or graded bar from displacements."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sdl.cli import main


@main.group()
def pinn() -> None:
    """Physics-informed inversion of a bar's layers (moduli, thicknesses) from a tensile test."""


@pinn.command("simulate")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--layers", type=click.IntRange(1, 12), default=3, show_default=True, help="Layers of a random bar.")
@click.option("--graded", is_flag=True, help="A power-law graded bar instead of layers (use --dic-points).")
@click.option("--sensors-per-layer", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Gauge points in each layer.")
@click.option("--dic-points", type=click.IntRange(1, 100000), help="An evenly spaced DIC grid instead.")
@click.option("--noise", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="sd of a reading as a fraction of the end displacement.")
@click.option("--no-force", is_flag=True, help="A stage without a load cell (no force in the file).")
@click.option("--seed", type=int, default=0, show_default=True)
def pinn_simulate(out: Path, layers: int, graded: bool, sensors_per_layer: int, dic_points: int | None, noise: float,
                  no_force: bool, seed: int) -> None:
    """Test a random bar on the simulated tensile stage and write its readings to OUT (CSV, with the
    truth in its header), the file `sdl pinn invert` reads."""
    import numpy as np

    from sdl.experiment import ExperimentSpec
    from sdl.instruments.base import InstrumentRefused
    from sdl.instruments.tensile_stage import TensileDicStage
    from sdl.surrogates.bar_inversion import BarData, write_csv

    try:
        stage = TensileDicStage(random={"kind": "graded" if graded else "layered", "layers": layers},
                                sensors_per_layer=sensors_per_layer, dic_points=dic_points, noise_fraction=noise,
                                force_readout=not no_force, seed=seed, time_scale=0.0)
        result = stage.run(ExperimentSpec(experiment_id=f"bar-{seed}", campaign_id="pinn-simulate"),
                           idempotency_key=f"bar-{seed}")
    except (ValueError, InstrumentRefused) as e:
        raise click.ClickException(str(e)) from None
    m = result.measurements
    data = BarData.from_measurements(m)
    if graded:
        truth = {"truth_grading": [m["truth_modulus_start_gpa"], m["truth_modulus_end_gpa"], m["truth_grading_exponent"]]}
    else:
        moduli = [m[f"truth_layer_{k}_modulus_gpa"] for k in range(1, layers + 1)]
        thicknesses = [m[f"truth_layer_{k}_thickness_mm"] for k in range(1, layers + 1)]
        truth = {"truth_moduli_gpa": moduli, "truth_interfaces_mm": list(np.cumsum(thicknesses)[:-1])}
    write_csv(data, out, truth)
    click.echo(f"wrote {out}: {len(data.positions_mm)} readings on a {data.length_mm:.1f} mm "
               f"{'graded' if graded else f'{layers}-layer'} bar")


@pinn.command("invert")
@click.argument("data_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--layers", type=click.IntRange(1, 12), default=3, show_default=True, help="Layers to infer.")
@click.option("--graded", is_flag=True, help="Infer a smoothly graded E(z) instead of layers.")
@click.option("--force-n", type=float, help="The load, if the file has none (a force read off the machine).")
@click.option("--members", type=click.IntRange(1, 64), default=5, show_default=True,
              help="Ensemble members for the uncertainty (1: none).")
@click.option("--device", default="auto", show_default=True, help="auto (GPU if there is one), cpu or cuda.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for inversion.png and inversion.json (default: beside DATA_CSV, <name>_inversion/).")
def pinn_invert(data_csv: Path, layers: int, graded: bool, force_n: float | None, members: int, device: str,
                out: Path | None) -> None:
    """Infer the layers (or a graded modulus) of the bar tested in DATA_CSV (columns position_mm,
    displacement_mm under '# length_mm: ...', '# area_mm2: ...', '# force_n: ...' lines) with the PINN,
    beside the segmented least-squares fit; print both, and the truth when the file gives it; plot."""
    import dataclasses

    from sdl.env.layered_bar import GradedBar, LayeredBar
    from sdl.report.inversion import plot_inversion
    from sdl.surrogates.bar_inversion import read_csv, relative_l2_error, segmented_fit
    from sdl.surrogates.pinn_inverse import GradedPinnSettings, PinnSettings, invert_graded, invert_layers

    try:
        data, truth = read_csv(data_csv)
        if force_n is not None:
            data = dataclasses.replace(data, force_n=force_n)
        click.echo(f"{len(data.positions_mm)} readings on a {data.length_mm:g} mm bar; fitting the PINN "
                   f"({members} member{'s' * (members > 1)}) and the segmented least-squares fit ...")
        if graded:
            estimates = [invert_graded(data, GradedPinnSettings(members=members, device=device)),
                         segmented_fit(data, layers)]
        else:
            estimates = [invert_layers(data, layers, PinnSettings(members=members, device=device)),
                         segmented_fit(data, layers)]
        true_bar = _truth(truth, data, layers)
    except ValueError as e:  # NotIdentifiable included: what is missing, in one line
        raise click.ClickException(str(e)) from None
    out = out or data_csv.with_name(data_csv.stem + "_inversion")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"data": str(data_csv), "length_mm": data.length_mm, "force_n": data.force_n}
    if graded:
        graded_fit, segmented = estimates
        click.echo(f"PINN (graded): E from {graded_fit.modulus_gpa[0]:.1f} to {graded_fit.modulus_gpa[-1]:.1f} GPa "
                   f"in {graded_fit.seconds:.1f} s")
        summary["pinn"] = {"z_mm": graded_fit.z_mm.tolist(), "modulus_gpa": graded_fit.modulus_gpa.tolist(),
                           "modulus_sd_gpa": graded_fit.modulus_sd_gpa.tolist(), "seconds": graded_fit.seconds}
        if isinstance(true_bar, GradedBar):
            truth_e = true_bar.modulus_gpa(graded_fit.z_mm)
            errors = {"pinn": graded_fit.relative_l2_error(truth_e),
                      "segmented": relative_l2_error(segmented.modulus_gpa(graded_fit.z_mm), truth_e)}
            summary["relative_l2_error_of_e"] = errors
            click.echo(f"relative L2 error of E(z): PINN {errors['pinn']:.2%}, segmented ({layers} layers) "
                       f"{errors['segmented']:.2%}")
    else:
        click.echo(_table(estimates, true_bar if isinstance(true_bar, LayeredBar) else None))
        summary |= {e.method: {**e.measurements(), "seconds": e.seconds} for e in estimates}
    (out / "inversion.json").write_text(json.dumps(summary, indent=1))
    plot_inversion(data, estimates, out / "inversion.png", truth=true_bar, title=data_csv.name)
    click.echo(f"wrote {out / 'inversion.png'} and {out / 'inversion.json'}")


def _truth(truth: dict, data, layers: int):
    from sdl.env.layered_bar import GradedBar, LayeredBar

    if "truth_grading" in truth:
        start, end, exponent = truth["truth_grading"]
        return GradedBar(start, end, exponent, data.length_mm, data.area_mm2)
    if "truth_moduli_gpa" in truth and "truth_interfaces_mm" in truth:
        import numpy as np

        edges = np.concatenate([[0.0], truth["truth_interfaces_mm"], [data.length_mm]])
        return LayeredBar(tuple(truth["truth_moduli_gpa"]), tuple(np.diff(edges)), data.area_mm2)
    return None


def _table(estimates, truth) -> str:
    rows = [f"{'':34s}" + "".join(f"{'layer ' + str(k + 1):>22s}" for k in range(len(estimates[0].moduli_gpa)))]
    for e in estimates:
        rows.append(f"{e.method + ' E (GPa)':34s}" + "".join(f"{m:>13.1f} ± {s:<6.1f}"
                                                            for m, s in zip(e.moduli_gpa, e.moduli_sd_gpa)))
        thickness_sd = e.measurements()
        rows.append(f"{'  thickness (mm)':34s}" + "".join(
            f"{h:>13.2f} ± {thickness_sd[f'layer_{k}_thickness_sd_mm']:<6.2f}"
            for k, h in enumerate(e.thicknesses_mm, 1)))
    if truth is not None and truth.n_layers == len(estimates[0].moduli_gpa):
        rows.append(f"{'truth E (GPa)':34s}" + "".join(f"{m:>13.1f}{'':9s}" for m in truth.moduli_gpa))
        rows.append(f"{'  thickness (mm)':34s}" + "".join(f"{h:>13.2f}{'':9s}" for h in truth.thicknesses_mm))
    rows.append("time: " + ", ".join(f"{e.method} {e.seconds:.1f} s" for e in estimates))
    return "\n".join(rows)
