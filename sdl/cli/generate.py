"""``sdl generate``: alloys for target properties from the constrained conditional VAE."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from sdl.cli import assignments, main


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

    from sdl.agents.generative_host import history_composition_data
    from sdl.campaign import load_config
    from sdl.env.calphad import default_cache_path
    from sdl.env.heat_treatment import textbook_route
    from sdl.env.twin import AlloyTwin
    from sdl.ledger import Ledger
    from sdl.settings import ConfigError
    from sdl.surrogates.generative import (
        plot_generated,
        save_composition_cvae,
        train_composition_cvae,
        twin_composition_data,
    )

    wanted = {"feasible": 1.0, **assignments(targets, "--target", "NAME=VALUE")}
    try:
        space = load_config(space_config).space
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if space.composition is None:
        raise click.ClickException(f"{space_config}: the space has no composition to generate")
    elements = list(space.composition.elements)
    click.echo(f"building the twin and labelling {twin_samples} alloys ...")
    twin = AlloyTwin(cache_path=default_cache_path())
    data = twin_composition_data(twin, space, twin_samples, seed=seed)
    if Ledger.exists_in(directory):
        try:
            data = data + history_composition_data([directory], elements)[0]
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
